"""The Train tab's runs: Start, Stop, Resume, and what the 2-s timer shows of the live run.

Trainings go through `runs.RunQueue` — one `lorakiln train` process at a time under
`<project>/.lorakiln-runs` — and the timer's `poll_view` both advances the queue and reads
progress. Start makes the checks `lorakiln train --dry-run` makes before it saves or queues
anything (`train_form.start_problems`); while a run is live it queues the new one after it,
says so on the button ("Queue after current") and keeps showing the live run. Stop and Resume
are enabled only where they can act (`run_status.buttons_state`), and the status bar shows the
run's phase (`run_status.status_line`).

Handlers are plain functions whose first argument is the server's `Sandbox` (the layout lives in
`train_layout`, the form in `train_form`); every path key of the config is checked by
`run_guard` before a run is queued, and again when its process starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.ui.run_guard import check_run
from lorakiln.ui.runs import Run, RunQueue
from lorakiln.ui.sandbox import Sandbox, SandboxError
from lorakiln.ui.train_form import save_form, start_problems, toml_path

RUNS_FOLDER = ".lorakiln-runs"
_QUEUES: dict[Path, RunQueue] = {}


def queue_for(box: Sandbox) -> RunQueue:
    """One queue object per project for the life of the UI: it holds the child process handles.
    Every run it starts is checked against `box` first (`run_guard.check_run`)."""
    folder = box.project / RUNS_FOLDER
    if folder not in _QUEUES:
        _QUEUES[folder] = RunQueue(folder, check=lambda config, overrides: check_run(box, config, overrides))
    return _QUEUES[folder]


def existing_queue(box: Sandbox) -> RunQueue | None:
    """The project's queue if it has one: polling alone creates no run folders."""
    folder = box.project / RUNS_FOLDER
    return queue_for(box) if folder in _QUEUES or (folder / "queue.json").is_file() else None


def start_run(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> tuple[str, str]:
    """Check the form as `--dry-run` would, save it, queue a training of it and start it if
    nothing else runs: (run id, message). Refused before anything is written when a check fails."""
    problems = start_problems(box, path, extra, *components)
    if problems:
        return "", "error: " + "; ".join(problems.values())
    return queue_form(box, path, extra, *components)


def queue_form(box: Sandbox, path: str, extra: dict[str, Any], *components: Any,
               processes: int = 1) -> tuple[str, str]:
    """Save the form and queue it (started at once if nothing else runs) on `processes`
    processes, for a caller that has made `start_problems`' checks already: (run id, message).
    The queue checks its paths again."""
    queue = queue_for(box)
    live = next((r for r in queue.runs() if r.status == "running"), None)
    saved = save_form(box, path, extra, *components)
    if saved.startswith("error"):
        return "", saved
    try:
        run = queue.submit(toml_path(box, path), processes=processes)
    except LorakilnError as err:
        return "", f"error: {err}"
    queue.poll()
    status = queue.get(run.id).status
    after = f" after {live.id}" if live is not None and status == "queued" else ""
    on = f" on {processes} processes" if processes > 1 else ""
    return run.id, f"{saved}; run {run.id} {status}{on}{after}"


def current_run(queue: RunQueue, run_id: str | None) -> Run | None:
    """The run the tab shows and acts on: the one named, else the running one, else the next
    queued, else the newest that did not end cancelled (a cancelled queue entry is not what a
    reload should show), else None."""
    if (run_id or "").strip():
        return queue.get(run_id.strip())
    runs = queue.runs()
    live = [r for r in runs if r.status == "running"] or [r for r in runs if r.status == "queued"]
    ended = [r for r in reversed(runs) if r.status != "cancelled"] or list(reversed(runs))
    return (live or ended or [None])[0]


def stop_run(box: Sandbox, run_id: str) -> str:
    """Stop the run (SIGINT: the trainer saves a LoRA and a state); a queued one is cancelled."""
    queue = existing_queue(box)
    try:
        run = current_run(queue, run_id) if queue else None
        if queue is None or run is None:
            return "error: no run to stop"
        run = queue.stop(run.id)
    except LorakilnError as err:
        return f"error: {err}"
    if run.status == "cancelled":
        return f"run {run.id}: cancelled before it started"
    return f"run {run.id}: stopping… the trainer saves a LoRA and its state, then Resume continues it"


def resume_run(box: Sandbox, run_id: str) -> tuple[str, str]:
    """Queue a continuation of a stopped run from its state: (new run id, message)."""
    queue = existing_queue(box)
    try:
        current = current_run(queue, run_id) if queue else None
        if queue is None or current is None:
            return "", "error: no run to resume"
        run = queue.resume(current.id)
    except LorakilnError as err:
        return "", f"error: {err}"
    queue.poll()
    return run.id, f"run {run.id} resumes {current.id}: {queue.get(run.id).status}"


def _images(box: Sandbox, paths: list[str], limit: int = 12) -> list[Any]:
    """Loaded copies of the newest images (served from memory, not by gradio's file server),
    only from inside the project, where the UI's runs write."""
    from lorakiln.data.images import open_image_rgb

    shown = []
    for path in paths[-limit:]:
        try:
            box.resolve_write(path)
        except SandboxError:
            continue
        try:
            shown.append((open_image_rgb(Path(path)), Path(path).name))
        except OSError:
            continue
    return shown


def poll_view(box: Sandbox, run_id: str, seen: str = "") -> tuple[Any, ...]:
    """Advance the queue, then what the tab shows of the run `current_run` picks: (status bar,
    loss table, samples, saved LoRAs, log tail, Start, Stop, Resume, samples signature).

    The loss table of a resumed run starts with the runs it continues (`RunQueue.progress`); the
    samples are sent only when they changed (`seen`), so the gallery does not reload every tick."""
    import gradio as gr
    import pandas as pd

    from lorakiln.ui.run_status import buttons_state, status_line
    from lorakiln.ui.wording import ui_words

    empty = pd.DataFrame({"step": [], "loss": []})
    queue = existing_queue(box)
    try:
        run = current_run(queue, run_id) if queue is not None else None
    except LorakilnError as err:
        return (f"error: {err}", empty, gr.skip(), "", "", *_buttons(buttons_state(None, False)), seen)
    if queue is None or run is None:
        return ("no runs yet", empty, [], "", "", *_buttons(buttons_state(None, False)), "")
    queue.poll()
    run = queue.get(run.id)
    progress = queue.progress(run.id)
    waiting = [r.id for r in queue.runs() if r.status == "queued" and r.id != run.id]
    line = f"**{run.id}** · {ui_words(status_line(run, progress))}"
    if waiting:
        line += f" · queued next: {', '.join(waiting)}"
    if run.status == "failed":
        line = f'<span class="lk-failed">{line}</span>'
    saves = [*progress["saves"], *([run.lora] if run.lora and run.lora not in progress["saves"] else [])]
    recommended = progress.get("recommended")
    if run.status == "done" and recommended:
        line += f" · recommended: {Path(recommended['file']).name} at strength {recommended['strength']:g}"
    table = pd.DataFrame(progress["losses"], columns=["step", "loss"]) if progress["losses"] else empty
    shown = progress["samples"][-12:]
    signature = f"{run.id}:{len(progress['samples'])}:{shown[-1] if shown else ''}"
    samples = gr.skip() if signature == seen else _images(box, shown)
    state = buttons_state(run, bool(run.state))
    return (line, table, samples, saved_text(saves, progress), queue.log_tail(run.id), *_buttons(state), signature)


def saved_text(saves: list[str], progress: dict[str, Any]) -> str:
    """One line per saved LoRA: its path, then what the trainer measured of it (validation loss,
    drift at strength 1) and the recommendation, so the file to use is read, not guessed."""
    recommended = progress.get("recommended") or {}
    lines = []
    for path in saves:
        facts = progress.get("signals", {}).get(path)
        line = path
        if facts:
            loss, drift = facts.get("val_loss"), facts.get("drift")
            line += (f"  · val loss {loss:.5f}" if loss is not None else "") + (
                f"  · drift {drift:.4f}" if drift is not None else "")
        if recommended.get("file") == path:
            line += f"  ← recommended at strength {recommended['strength']:g}"
        lines.append(line)
    return "\n".join(lines)


def _buttons(state: dict[str, Any]) -> tuple[Any, Any, Any]:
    """gradio updates for Start (its label says whether it queues), Stop and Resume."""
    import gradio as gr

    return (gr.update(value=state["start_label"], interactive=state["start"]),
            gr.update(interactive=state["stop"]), gr.update(interactive=state["resume"]))


QUEUE_COLUMNS = ["run", "status", "config", "step", "started", "ended", "LoRA", "message"]


def queue_table(box: Sandbox) -> Any:
    """Every run of the project's queue, newest first: what ran, how it ended, what it wrote."""
    import pandas as pd

    queue = existing_queue(box)
    rows = []
    for run in reversed(queue.runs() if queue else []):
        # only a running run's events file is read on each 2 s tick: finished runs keep their record
        last = queue.progress(run.id)["last"] if queue and run.status == "running" else None
        step = f"{last['step']}/{last.get('total_steps', '?')}" if last else ""
        config = Path(run.config).name + (f" ({run.processes} processes)" if run.processes > 1 else "")
        rows.append([run.id, run.status, config, step, _clock(run.started), _clock(run.ended),
                     Path(run.lora).name if run.lora else "", run.message or ""])
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def _clock(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""
