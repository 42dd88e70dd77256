"""A machine-readable record of a training run: one JSON object per line, as it happens.

The console bar is for people; anything that watches a run from outside — the web UI's run
queue, a notebook, a script on a cluster — needs the same facts without parsing tqdm. `lorakiln
train --events FILE` appends them here through the loop's callbacks (`training.loop.Callback`),
so the loop knows nothing about who listens. Every line is flushed when written, so a reader
polling the file sees each event as soon as the trainer emits it, and a run that crashes still
leaves everything up to its last step.

Events (``event`` key) and their fields:

* ``start`` — ``config``, ``output_dir``, ``output_name`` (every event also has ``time``);
* ``step`` — ``step``, ``total_steps``, ``epoch`` (1-based), ``loss`` (None between logged
  steps), ``elapsed`` s, ``steps_per_s`` and ``eta`` s (over the steps of this process, so a
  resumed run's rate is its own), ``time_left`` s (the steps *and* the sample renders and final
  grids still to come, training/render_plan.py; None before a step was timed) and
  ``renders_left`` (images still to render);
* ``save`` — ``path`` of a LoRA (epoch, step or final) file;
* ``sample`` / ``validation`` — ``paths`` of the PNGs rendered at ``step``;
* ``epoch`` — ``epoch`` finished, ``step``;
* ``phase`` — ``name`` of the phase starting, optionally with ``done`` and ``total`` (ints:
  items finished so far out of how many), so a watcher can say what a run is doing between
  step events (training/loop.py, training/prepare.py), in this order:

  - ``preparing`` — dataset scan and checks, before anything heavy;
  - ``loading model`` — the base model loads (then class images, the network, the optimizer);
  - ``caching latents`` — with ``done``/``total`` latents encoded by the VAE (an image counts
    twice with flip_aug); at most about one a second plus the last (``done == total``), never
    one per image of a big dataset;
  - ``training`` — the steps begin (``step`` events from here on);
  - ``rendering samples`` — validation or sample images at ``step``, with ``done`` prompts
    rendered out of ``total`` (one event before each prompt's render) and ``folder``
    (``validation`` or ``sample``);
  - ``saving`` — a LoRA (and state) of ``step`` is being written: an epoch/step checkpoint, the
    save on a stop, or the final LoRA;
  - ``final grids`` — the end-of-run grids (the final LoRA is already written).

  A phase lasts until the next ``phase`` or ``step`` event: a step event after a
  ``rendering samples`` or ``saving`` phase means training went on;
* ``signals`` — after each saved epoch, step or final file (`[validation] signals`,
  training/file_signals.py): ``file`` (its path), ``step``, ``val_loss`` (the held-out images'
  denoising loss at fixed noise and timesteps, SimpleTuner's eval loss; None without held-out
  images), ``drift`` (the drift score at strength 1; None for full fine-tuning) and
  ``drift_by_strength`` ({"1": …, "0.9": …, … "0.5": …});
* ``recommended`` — at the end, after the final file's ``signals``: ``file`` (one of the saved
  files), ``strength``, ``rule`` (the rule, in words) and ``reason`` (why this file under it);
* ``done`` — ``path`` of the final LoRA, ``step``, ``grid`` (epochs × strengths PNG or None);
* ``stopped`` — ``reason``, ``lora`` and ``state`` written on SIGINT/SIGTERM (resume from it);
* ``error`` — ``message`` of the error that ended the run.

Step events are written at most every ``min_interval`` seconds (plus the last step and every
step with a loss), so a fast tiny model does not spend its time writing JSON.

`read_events` reads a whole file; `EventsTail` follows a growing one cheaply (the web UI's queue).
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import IO, Any


class EventsFile:
    """A `Callback` that appends the loop's events to a JSON-lines file."""

    def __init__(self, path: str | Path, *, min_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        self.min_interval = min_interval
        self._started = time.monotonic()
        self._first_step: int | None = None
        # None, not 0.0: time.monotonic() counts from boot, so on a machine up for less than
        # min_interval a 0.0 start would throttle away the first step.
        self._last_write: float | None = None

    def write(self, event: str, **info: Any) -> None:
        """Append one event (any JSON-serialisable fields; paths become strings)."""
        record = {"event": event, "time": time.time(), **{k: _plain(v) for k, v in info.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "step":
            self._step(info)
        else:
            self.write(event, **info)

    def _step(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        step, total = int(info["step"]), int(info["total_steps"])
        if self._first_step is None:
            self._first_step, self._started = step - 1, now
        throttled = self._last_write is not None and now - self._last_write < self.min_interval
        if throttled and step < total and info.get("loss") is None:
            return
        self._last_write = now
        elapsed = now - self._started
        done = step - self._first_step
        rate = done / elapsed if elapsed > 0 else None
        self.write("step", step=step, total_steps=total, epoch=int(info["epoch"]) + 1, loss=info.get("loss"),
                   elapsed=round(elapsed, 3), steps_per_s=rate,
                   eta=(total - step) / rate if rate else None,
                   time_left=_rounded(info.get("time_left")), renders_left=info.get("renders_left"))

    def close(self) -> None:
        self._fh.close()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event in `path` (a line still being written is left for the next read).

    A whole line that does not parse — a write cut short by a crash, with the next run's events
    appended after it — is skipped, not taken for the end of the file: what follows is whole."""
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break  # the writer is mid-line; everything before it is whole
    return events


class EventsTail:
    """An events file followed as it grows, folded into the few facts a watcher polls for.

    The web UI asks for a running run's progress every two seconds, and a long run writes a line
    per step: re-reading and re-parsing the whole file on every tick would cost more the longer
    the run goes. `update` reads only the bytes appended since the last call (whole lines; a line
    still being written waits for the next call) and folds each new event into the fields below.
    A file that shrank or was replaced is read again from the start.
    """

    #: How many of the latest step events `recent` keeps (a sliding window for the speed).
    RECENT = 20

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self._ident, self._offset = ident, 0
        self.start: dict[str, Any] | None = None  # the first ``start`` event
        self.last_step: dict[str, Any] | None = None
        self.first_step: int | None = None  # a resumed run's first step is its state's step + 1
        self.phase: dict[str, Any] | None = None  # the latest ``phase`` event
        self.losses: dict[int, float] = {}  # step → loss, for the steps whose loss was logged
        self.saves: list[str] = []
        self.samples: list[str] = []
        self.recent: deque[tuple[int, float]] = deque(maxlen=self.RECENT)  # (step, time)
        self.signals: dict[str, dict[str, Any]] = {}  # saved file → its ``signals`` event
        self.last: dict[str, dict[str, Any]] = {}  # the latest event of each kind

    def update(self) -> EventsTail:
        """Fold in what was appended since the last call; returns self."""
        try:
            stat = self.path.stat()
        except OSError:
            self._reset(None)
            return self
        ident = (stat.st_dev, stat.st_ino)
        if ident != self._ident or stat.st_size < self._offset:
            self._reset(ident)
        if stat.st_size > self._offset:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(stat.st_size - self._offset)
            end = chunk.rfind(b"\n") + 1
            self._offset += end
            for line in chunk[:end].splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash: the ones after it are whole
                if isinstance(event, dict):
                    self._fold(event)
        return self

    def _fold(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step" and isinstance(event.get("step"), int):
            step = event["step"]
            self.last_step = event
            if self.first_step is None:
                self.first_step = step
            if event.get("loss") is not None:
                self.losses[step] = event["loss"]
            self.recent.append((step, float(event.get("time") or 0.0)))
        elif kind == "phase":
            self.phase = event
        elif kind == "save" and event.get("path"):
            self.saves.append(event["path"])
        elif kind in ("sample", "validation"):
            self.samples += event.get("paths") or []
        elif kind == "start" and self.start is None:
            self.start = event
        elif kind == "signals" and event.get("file"):
            self.signals[str(event["file"])] = event
        if isinstance(kind, str):
            self.last[kind] = event


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
