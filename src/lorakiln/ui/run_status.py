"""What the Train tab's status bar says about a run, and which of its buttons can be pressed.

A run spends long stretches outside its steps — loading the model, caching latents, rendering
samples, saving — and a bar that shows only the last step looks frozen then. The trainer writes
a ``phase`` event as each part begins (training/events.py); this module turns a run's record
(`runs.Run`) and its `RunQueue.progress` into one short line: ``caching latents 3/10``, ``step
120/1500 · loss 0.1234 · 2.31 it/s · ETA 10 min 5 s``, ``stopping… (saving a LoRA and state)``,
``stopped at step 60 (resume continues it)``.

The speed is measured here over the latest step events (a sliding window), not taken from the
trainer's figure, which averages over the whole process: after a slow first step or a long
render, a cumulative rate stays wrong for minutes, a window recovers within a few steps.

Pure functions of their arguments, torch-free and without a gradio import, so they are cheap to
call on every 2 s tick and easy to test without a browser or a training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorakiln.ui.runs import Run

#: Statuses of a run that is waiting or training (as `runs.ACTIVE`, kept here so this module
#: imports nothing of the queue at run time).
LIVE = ("queued", "running")
#: Statuses a run can be resumed from when it left a state behind (as `RunQueue.resume` accepts).
RESUMABLE = ("stopped", "interrupted", "failed")
#: Phases that show a ``done/total`` count.
COUNTED = ("caching latents", "rendering samples")


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 02 min``: as precise as an estimate deserves."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def steps_per_second(recent: Sequence[Sequence[float]]) -> float | None:
    """Steps a second over the window of (step, time) pairs; None until two distinct steps,
    with time between them, can be timed."""
    if len(recent) < 2:
        return None
    (first_step, first_time), (last_step, last_time) = recent[0], recent[-1]
    steps, seconds = last_step - first_step, last_time - first_time
    if steps <= 0 or seconds <= 0:
        return None
    return steps / seconds


def eta_seconds(recent: Sequence[Sequence[float]], total: int | None) -> float | None:
    """Seconds until step `total` at the window's rate; None while it cannot be measured."""
    rate = steps_per_second(recent)
    if rate is None or total is None or not recent:
        return None
    return max(0.0, (total - recent[-1][0]) / rate)


def speed_text(recent: Sequence[Sequence[float]], total: int | None, running: bool,
               time_left: float | None = None, renders_left: int = 0) -> str:
    """`` · 2.31 it/s · ETA 10 min 5 s`` as tqdm bars write it: s/step below one step a second,
    ``measuring speed…`` before a second step could time one, no ETA once the run has ended.
    With the trainer's own `time_left` (its step event's, which counts the sample renders and
    final grids still to come) the ETA is that one, and says how many renders it includes."""
    rate = steps_per_second(recent)
    if rate is None:
        return " · measuring speed…" if running else ""
    text = f" · {rate:.2f} it/s" if rate >= 1 else f" · {1 / rate:.1f} s/step"
    if running and time_left is not None:
        return text + f" · ETA {format_duration(time_left)}" + (f" incl. {renders_left} renders" if renders_left else "")
    eta = eta_seconds(recent, total) if running else None
    return text + (f" · ETA {format_duration(eta)}" if eta is not None else "")


def current_phase(progress: dict[str, Any]) -> dict[str, Any] | None:
    """The phase event the run is in now, or None when it is stepping (or has said nothing).

    A step event ends any phase before it (training went on after the render or the save);
    ``training`` itself is the step line. Phases written after the latest step still count.
    """
    phase, last = progress.get("phase"), progress.get("last")
    if not phase or phase.get("name") == "training":
        return None
    if last is not None and float(phase.get("time") or 0) < float(last.get("time") or 0):
        return None
    return phase


def step_text(progress: dict[str, Any], running: bool) -> str:
    """``step 120/1500 · loss 0.1234 · 2.31 it/s · ETA 10 min 5 s`` (the speed part while
    running or when it was measured; the loss is the latest logged one)."""
    last = progress.get("last") or {}
    total = last.get("total_steps")
    losses = progress.get("losses") or []
    loss = losses[-1][1] if losses else last.get("loss")
    return (f"step {last.get('step', '?')}/{total if total is not None else '?'}"
            + (f" · loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
            + speed_text(progress.get("recent") or [], total, running, last.get("time_left"),
                         int(last.get("renders_left") or 0)))


def status_line(run: Run, progress: dict[str, Any]) -> str:
    """One short Markdown line for the bar beside Start/Stop: what the run is doing or how it
    ended (see the module docstring). `progress` is `RunQueue.progress(run.id)`."""
    status = run.status
    last = progress.get("last")
    if status == "queued":
        return "queued"
    if status == "running":
        if run.stop_requested is not None:  # before the first step there is nothing to save
            return "stopping… (saving a LoRA and state)" if last is not None else "stopping…"
        phase = current_phase(progress)
        if phase is not None:
            return _phase_text(phase)
        if last is not None:
            return step_text(progress, running=True)
        started = (progress.get("phase") or {}).get("name") == "training"
        return "training · measuring speed…" if started else "starting"
    if status == "done":
        return "done"
    if status == "stopped":
        if last is not None:
            return f"stopped at step {last['step']} (resume continues it)"
        return "stopped before training began"
    if status == "failed":
        first = (run.message or "").strip().splitlines()
        return "failed: " + _escape(first[0]) if first else "failed"
    return _escape(status)  # cancelled, interrupted (and any status a later version adds)


def _phase_text(phase: dict[str, Any]) -> str:
    name = _escape(str(phase.get("name") or "working"))
    done, total = phase.get("done"), phase.get("total")
    if phase.get("name") in COUNTED and isinstance(done, int) and isinstance(total, int):
        return f"{name} {done}/{total}"
    return name


_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def _escape(text: str) -> str:
    """A message (paths with underscores, a `*`) shown as written, not as Markdown."""
    return _MARKDOWN.sub(r"\\\1", text)


def buttons_state(run: Run | None, has_state: bool) -> dict[str, Any]:
    """Which of Start, Stop and Resume can be pressed for the shown run, and Start's label.

    ``start`` is always allowed: while a run is live it reads "Queue after current" (the queue
    runs one at a time). ``stop`` only for a queued or running run not already stopping (a second
    signal would make the trainer exit without saving). ``resume`` only for a run that stopped,
    was interrupted or failed and left a state (`has_state`) to continue from.
    """
    live = run is not None and run.status in LIVE
    stopping = run is not None and run.status == "running" and run.stop_requested is not None
    return {
        "start": True,
        "start_label": "Queue after current" if live else "Start",
        "stop": live and not stopping,
        "resume": run is not None and run.status in RESUMABLE and has_state,
    }


__all__ = ["buttons_state", "current_phase", "eta_seconds", "format_duration", "speed_text",
           "status_line", "step_text", "steps_per_second"]
