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
  resumed run's rate is its own);
* ``save`` — ``path`` of a LoRA (epoch, step or final) file;
* ``sample`` / ``validation`` — ``paths`` of the PNGs rendered at ``step``;
* ``epoch`` — ``epoch`` finished, ``step``;
* ``phase`` — ``name`` of the phase starting: ``preparing`` (dataset, model, caches),
  ``training``, ``final grids`` (training/loop.py);
* ``done`` — ``path`` of the final LoRA, ``step``, ``grid`` (epochs × strengths PNG or None);
* ``stopped`` — ``reason``, ``lora`` and ``state`` written on SIGINT/SIGTERM (resume from it);
* ``error`` — ``message`` of the error that ended the run.

Step events are written at most every ``min_interval`` seconds (plus the last step), so a fast
tiny model does not spend its time writing JSON.
"""

from __future__ import annotations

import json
import time
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
                   eta=(total - step) / rate if rate else None)

    def close(self) -> None:
        self._fh.close()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event in `path` (a line still being written is left for the next read)."""
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the writer is mid-line; everything before it is whole
    return events


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
