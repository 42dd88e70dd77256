"""The Train tab's handlers: the form round trip, total steps, and Start / Stop / Resume driven by
the timer's poll handler on real tiny-SD1 trainings (as tests/ui/test_runs.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lorakiln.ui import train_tab as tab
from lorakiln.ui.sandbox import Sandbox


def poll_until(project: Sandbox, run_id: str, done: Callable[[tuple], bool], timeout: float = 240) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        view = tab.poll_view(project, run_id, "")
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def test_start_reaches_done_through_the_poll_handler(project: Sandbox, tiny_form: Callable) -> None:
    assert tab.poll_view(project, "", "")[0] == "no runs yet"
    assert tab.stop_run(project, "").startswith("error")
    assert not (project.project / tab.RUNS_FOLDER).exists()  # polling creates no queue
    extra, components = tiny_form(1)
    run_id, msg = tab.start_run(project, "run.toml", extra, *components)
    assert run_id and "running" in msg and (project.project / "run.toml").is_file()
    status, table, _samples, saves, log, start, stop, resume, _seen = poll_until(
        project, "", lambda v: "· done" in v[0] or "failed" in v[0])
    assert status.startswith(f"**{run_id}** · done · recommended: last.safetensors at strength"), log
    assert start["value"] == "Start" and not stop["interactive"] and not resume["interactive"]  # done: nothing to act on
    assert list(table["step"])[-1] == 10 and len(table) >= 1
    final = saves.splitlines()[-1]  # path · what the trainer measured · the recommendation
    assert Path(final.split("  ·")[0]).name == "last.safetensors" and Path(final.split("  ·")[0]).is_file()
    assert "· drift " in final and "← recommended at strength" in final, final
    assert "LoRA written" in log
    queue = tab.queue_table(project)
    assert list(queue["run"]) == [run_id] and list(queue["status"]) == ["done"]
    assert queue["LoRA"][0] == "last.safetensors" and queue["config"][0] == "run.toml" and queue["ended"][0]


def test_stop_then_resume_reaches_done(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(8)  # 80 steps
    run_id, _ = tab.start_run(project, "run.toml", extra, *components)
    view = poll_until(project, run_id, lambda v: "step " in v[0] and int(v[0].split("step ")[1].split("/")[0]) >= 2)
    assert view[5]["value"] == "Queue after current" and view[6]["interactive"]  # Start queues; Stop can act
    assert "stopping" in tab.stop_run(project, run_id)
    status, *_ = poll_until(project, run_id, lambda v: "· stopped" in v[0] or "failed" in v[0])
    assert f"**{run_id}** · stopped at step" in status, status
    assert tab.stop_run(project, run_id).startswith("error")  # an ended run: nothing to stop
    stopped = tab.queue_for(project).get(run_id)
    assert (Path(stopped.state) / "state.json").is_file() and Path(stopped.lora).is_file()
    new_id, msg = tab.resume_run(project, run_id)
    assert new_id != run_id and f"resumes {run_id}" in msg
    status, table, _s, saves, log, *_ = poll_until(project, new_id, lambda v: "· done" in v[0]
                                                   or "failed" in v[0])
    assert "· done" in status, log
    steps = list(table["step"])
    assert steps[0] <= 2 and steps[-1] == 80 and steps == sorted(set(steps)), steps  # the chart goes on from run 1
    assert Path(saves.splitlines()[-1].split("  ·")[0]).is_file()
    assert tab.resume_run(project, new_id)[1].startswith("error")  # done: nothing to resume
