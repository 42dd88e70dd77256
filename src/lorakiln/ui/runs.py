"""The web UI's run queue: trainings kept on disk, run one at a time, each in its own process.

Why a separate process per run (not a thread in the UI): a training that crashes, runs out of
memory or is killed must not take the UI with it, and the UI must stay responsive while the
trainer holds the CPU/GPU. Why on disk: a queue of experiments outlives a browser tab and a UI
restart. The queue drives exactly the CLI a user would type — ``python -m lorakiln train CONFIG
--events FILE [--set k=v …]`` — and learns what happens from that run's events file
(`lorakiln.training.events`), so the UI holds no training logic of its own.

Layout under the queue folder::

    queue.json                  every run's record (written atomically)
    runs/<id>/events.jsonl      the trainer's events (progress, saves, samples, end)
    runs/<id>/log.txt           its console output (the tail is shown in the UI)

Statuses: ``queued`` → ``running`` → ``done`` | ``stopped`` (SIGINT from Stop: the trainer saved
a LoRA and a state, so `resume` continues it exactly) | ``failed`` (an error; its message is
kept) | ``interrupted`` (the process vanished without saying why, e.g. a power cut — resumable
from its last saved state if there is one) | ``cancelled`` (stopped before it started).
Runs are started with a new process session, so stopping the UI (Ctrl-C) does not stop a
training; a UI started again finds the running process and keeps watching it. A Stop on a running
run is recorded in its record (``stop_requested``), so every UI — another browser, a restarted
one — shows it as stopping until the trainer has saved and exited.

`progress` follows each run's events file incrementally (`EventsTail`), since the UI asks every
two seconds; a resumed run's loss curve starts with the runs it continues, so the chart goes on
where the stopped run left off instead of starting again at its resume step.

A queue may be given a `check` (the web UI passes `run_guard.check_run` bound to its sandbox):
it is called with the run TOML and overrides when a run is submitted and again just before its
process starts, so neither a TOML edited in between nor a hand-edited ``queue.json`` can start
a training the check refuses; such a run ends ``failed`` with the check's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lorakiln.atomic import write_text_atomic
from lorakiln.errors import LorakilnError
from lorakiln.training.events import EventsTail, read_events

ACTIVE = ("queued", "running")
#: Exit status of `lorakiln train` after SIGINT/SIGTERM saved a state (cli.py `_cmd_train`).
STOPPED_EXIT = 130


@dataclass
class Run:
    """One queued or finished training."""

    id: str
    config: str
    overrides: list[str] = field(default_factory=list)
    status: str = "queued"
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    returncode: int | None = None
    resume_of: str | None = None
    message: str | None = None  # why it failed or stopped
    lora: str | None = None  # the final LoRA (done) or the one saved on stop
    state: str | None = None  # the state folder a stopped/interrupted run resumes from
    stop_requested: float | None = None  # when Stop was pressed on the running run (time.time())
    processes: int = 1  # `lorakiln train --num-processes N` when more than 1 (one per GPU)


class RunQueue:
    """Submit, stop and resume runs; `poll` starts the next one when the current one ends.

    The UI calls `poll` from a timer; nothing here needs a thread.
    """

    def __init__(self, folder: str | Path, *, python: str = sys.executable,
                 check: Callable[[Path, list[str]], Any] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.check = check
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._tails: dict[str, EventsTail] = {}
        self._resume_steps: dict[str, int | None] = {}
        self._runs: dict[str, Run] = self._load()
        self._adopt_orphans()

    # -- records ----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.folder / "queue.json"

    def _load(self) -> dict[str, Run]:
        if not self.path.is_file():
            return {}
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise LorakilnError(f"{self.path} is not valid JSON ({err}); move it aside to start a new queue "
                                "(the runs' outputs are untouched)") from None
        known = {f.name for f in fields(Run)}
        return {row["id"]: Run(**{k: v for k, v in row.items() if k in known}) for row in rows}

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps([asdict(r) for r in self._runs.values()], indent=1))

    def run_dir(self, run_id: str) -> Path:
        return self.folder / "runs" / run_id

    def events_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "events.jsonl"

    def log_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "log.txt"

    def runs(self) -> list[Run]:
        """Every run, oldest first."""
        return sorted(self._runs.values(), key=lambda r: (r.created, r.id))

    def get(self, run_id: str) -> Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise LorakilnError(f"no run {run_id!r} in {self.path}") from None

    # -- commands ---------------------------------------------------------------------------

    def submit(self, config: str | Path, overrides: list[str] | None = None, *,
               resume_of: str | None = None, processes: int = 1) -> Run:
        """Queue a training of `config` (a run TOML) with `--set` overrides, on `processes`
        local processes (`--num-processes`; a Stop's SIGINT reaches all of them through it)."""
        if not isinstance(processes, int) or processes < 1:
            raise LorakilnError(f"processes: {processes!r}; give a whole number, at least 1")
        config = Path(config).resolve()
        if not config.is_file():
            raise LorakilnError(f"{config}: no such run config; save the settings first")
        if self.check is not None:
            self.check(config, list(overrides or []))
        run_id = f"{len(self._runs) + 1:04d}-{config.stem}"
        while run_id in self._runs:  # never reuse an id, even after edits to queue.json
            run_id = f"{run_id}-x"
        run = Run(run_id, str(config), list(overrides or []), created=time.time(), resume_of=resume_of,
                  processes=processes)
        self._runs[run_id] = run
        self._save()
        return run

    def stop(self, run_id: str) -> Run:
        """Stop a run: a queued one is cancelled; a running one gets SIGINT, on which the trainer
        saves a usable LoRA and a state before it exits (status ``stopped`` once it has).

        The request is recorded (``stop_requested``) before the signal, so every UI shows the run
        as stopping while it saves. A second Stop on a run already stopping sends nothing: the
        trainer takes a second signal as "exit now without saving". A run that has ended raises
        `LorakilnError`, so a stale page's Stop says why nothing happened."""
        run = self.get(run_id)
        if run.status == "queued":
            run.status, run.ended = "cancelled", time.time()
            self._save()
        elif run.status == "running":
            if run.stop_requested is None:
                run.stop_requested = time.time()
                self._save()
                if run.pid is not None:
                    with contextlib.suppress(ProcessLookupError):  # gone: poll() records how it ended
                        os.kill(run.pid, signal.SIGINT)
        else:
            raise LorakilnError(f"run {run.id} already ended ({run.status}); nothing to stop")
        return run

    def resume(self, run_id: str) -> Run:
        """Queue a continuation of a stopped or interrupted run from its saved state."""
        run = self.get(run_id)
        state = run.state or self._latest_state(run)
        if run.status not in ("stopped", "interrupted", "failed") or not state:
            raise LorakilnError(f"run {run_id} ({run.status}) has no saved state to resume from")
        return self.submit(run.config, [*_without_resume(run.overrides), f"train.resume={json.dumps(state)}"],
                           resume_of=run_id, processes=run.processes)

    # -- the worker -------------------------------------------------------------------------

    def poll(self) -> Run | None:
        """Record how finished runs ended and start the next queued run; returns the running one."""
        for run in self._runs.values():
            if run.status == "running" and not self._alive(run):
                self._finish(run)
        running = next((r for r in self._runs.values() if r.status == "running"), None)
        for queued in ([r for r in self.runs() if r.status == "queued"] if running is None else []):
            started = self._start(queued)  # a run its check refuses ends failed: try the next one
            if started.status == "running":
                return started
        return running

    def wait(self, run_id: str, timeout: float = 600.0, interval: float = 0.2) -> Run:
        """Poll until `run_id` is no longer active (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while self.get(run_id).status in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {self.get(run_id).status} after {timeout:.0f} s")
            self.poll()
            time.sleep(interval)
        return self.get(run_id)

    def _start(self, run: Run) -> Run:
        if self.check is not None:
            try:
                self.check(Path(run.config), list(run.overrides))
            except LorakilnError as err:
                run.status, run.ended, run.message = "failed", time.time(), f"refused: {err}"
                self._save()
                return run
        folder = self.run_dir(run.id)
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "lorakiln", "train", run.config, "--events", str(self.events_path(run.id))]
        for item in run.overrides:
            cmd += ["--set", item]
        if run.processes > 1:
            cmd += ["--num-processes", str(run.processes)]
        with self.log_path(run.id).open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(Path(run.config).parent), start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._procs[run.id] = proc
        run.status, run.started, run.pid = "running", time.time(), proc.pid
        self._save()
        return run

    def _alive(self, run: Run) -> bool:
        proc = self._procs.get(run.id)
        if proc is not None:
            return proc.poll() is None
        return run.pid is not None and _pid_runs(run.pid, str(self.events_path(run.id)))

    def _finish(self, run: Run) -> None:
        proc = self._procs.pop(run.id, None)
        run.returncode = proc.returncode if proc is not None else None
        run.pid, run.ended = None, time.time()
        last = {e["event"]: e for e in read_events(self.events_path(run.id))}
        if "done" in last:
            run.status, run.lora = "done", last["done"].get("path")
        elif "stopped" in last:
            run.status, run.lora, run.state = "stopped", last["stopped"].get("lora"), last["stopped"].get("state")
            run.message = last["stopped"].get("reason")
        elif run.returncode in (STOPPED_EXIT, -signal.SIGINT):  # stopped while loading, before step 1
            run.status, run.message = "stopped", "stopped before training began"
        elif "error" in last or (run.returncode not in (None, 0)):
            run.status = "failed"
            run.message = last["error"]["message"] if "error" in last else self._log_tail(run.id, 1)
        else:
            run.status, run.message = "interrupted", "the training process ended without a result"
        if run.state is None and run.status != "done":
            run.state = self._latest_state(run)
        self._save()

    def _adopt_orphans(self) -> None:
        """After a UI restart: runs still alive keep ``running``; dead ones are finished."""
        for run in self._runs.values():
            if run.status == "running" and not self._alive(run):
                self._finish(run)

    # -- what the UI shows ------------------------------------------------------------------

    def progress(self, run_id: str) -> dict[str, Any]:
        """What the UI shows of a run, from its events (read incrementally: this runs every 2 s).

        ``last``: the latest step event (step, total_steps, loss, …) or None; ``losses``: (step,
        loss) pairs by step — for a resumed run the runs it continues up to its resume step,
        then its own; ``saves`` and ``samples``: paths written; ``output_dir``; ``phase``: the
        latest phase event or None (`run_status` decides whether a later step supersedes it);
        ``recent``: (step, time) of the latest step events, for a speed over a sliding window;
        ``signals``: saved file → its validation loss and drift (``signals`` event);
        ``recommended``: the end-of-run recommendation (file, strength, rule, reason) or None.
        """
        tail = self._tail(run_id)
        return {
            "last": tail.last_step,
            "losses": sorted(self._chain_losses(run_id, set()).items()),
            "saves": list(tail.saves),
            "samples": list(tail.samples),
            "output_dir": tail.start.get("output_dir") if tail.start else None,
            "phase": tail.phase,
            "recent": list(tail.recent),
            "signals": dict(tail.signals),
            "recommended": tail.last.get("recommended"),
        }

    def _tail(self, run_id: str) -> EventsTail:
        tail = self._tails.get(run_id)
        if tail is None:
            tail = self._tails[run_id] = EventsTail(self.events_path(run_id))
        return tail.update()

    def _chain_losses(self, run_id: str, seen: set[str]) -> dict[int, float]:
        """step → loss of `run_id`, after those of the runs it resumes (a later run wins a step)."""
        own = self._tail(run_id).losses
        run = self._runs.get(run_id)
        if run is None or run.resume_of is None or run.resume_of in seen | {run_id}:
            return own
        start = self._resume_step(run)
        earlier = self._chain_losses(run.resume_of, seen | {run_id})
        merged = {s: v for s, v in earlier.items() if start is None or s <= start}
        merged.update(own)
        return merged

    def _resume_step(self, run: Run) -> int | None:
        """The step a resumed run starts from: its first step event's, else its state's."""
        first = self._tail(run.id).first_step
        if first is not None:
            return first - 1
        if run.id not in self._resume_steps:  # read once: a resuming run later overwrites the state
            self._resume_steps[run.id] = _state_step(run)
        return self._resume_steps[run.id]

    def _log_tail(self, run_id: str, lines: int = 40) -> str:
        path = self.log_path(run_id)
        if not path.is_file():
            return ""
        text = path.read_bytes()[-64_000:].decode("utf-8", "replace").replace("\r", "\n")
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])

    def log_tail(self, run_id: str, lines: int = 40) -> str:
        """The last `lines` lines of the run's console output (tqdm redraws become lines)."""
        return self._log_tail(run_id, lines)

    def _latest_state(self, run: Run) -> str | None:
        """The state the run's trainer last wrote (`<output_dir>/<name>-state`), if any — found by
        the trainer's own rule (`recovery.find_state`), so a kill between the two renames of a state
        swap still offers the complete state the save left beside it."""
        from lorakiln.training.recovery import find_state

        start = next((e for e in read_events(self.events_path(run.id)) if e["event"] == "start"), None)
        if start is None:
            return None
        try:
            state, _note = find_state(Path(start["output_dir"]) / f"{start['output_name']}-state")
        except LorakilnError:
            return None
        return str(state)


def _state_step(run: Run) -> int | None:
    """``position.global_step`` of the state a run's ``train.resume=`` override names, if readable."""
    value = next((o.split("=", 1)[1].strip() for o in reversed(run.overrides)
                  if o.replace(" ", "").startswith("train.resume=")), None)
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(value)
    try:
        folder = Path(Path(run.config).parent, str(value))
        step = json.loads((folder / "state.json").read_text(encoding="utf-8"))["position"]["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def _without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.replace(" ", "").startswith("train.resume=")]


def _pid_runs(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and (where /proc tells) still our trainer, not a reused pid."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return marker in cmdline.read_bytes().decode("utf-8", "replace")
        except OSError:
            return False
    return True
