"""The UI's run queue: on disk, one run at a time in its own process, stop → state → resume,
and a UI restart that finds its runs again. Every run is a real `lorakiln train` on tiny SD1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lorakiln.errors import LorakilnError
from lorakiln.training.events import read_events
from lorakiln.ui.runs import RunQueue

RUN = """
[model]
pretrained_model = "{model}"
[data]
train_data_dir = "train"
resolution = 64
enable_bucket = false
[network]
network_dim = 4
network_train_unet_only = true
[train]
train_batch_size = 1
max_train_epochs = {epochs}
seed = 1
[output]
output_dir = "{out}"
output_name = "last"
"""


@pytest.fixture
def project(tiny_project: Path, tiny_sd1_dir: Path) -> Path:
    return tiny_project


def write_run(project: Path, name: str, epochs: int = 1, model: Path | None = None) -> Path:
    path = project / f"{name}.toml"
    path.write_text(RUN.format(model=model or project.parent / "missing", epochs=epochs, out=f"out-{name}"),
                    encoding="utf-8")
    return path


def test_runs_one_at_a_time_to_done(project: Path, tiny_sd1_dir: Path) -> None:
    queue = RunQueue(project / "queue")
    first = queue.submit(write_run(project, "a", model=tiny_sd1_dir))
    second = queue.submit(write_run(project, "b", model=tiny_sd1_dir))
    queue.poll()
    assert (queue.get(first.id).status, queue.get(second.id).status) == ("running", "queued")
    done = queue.wait(first.id)
    assert done.status == "done" and done.returncode == 0 and Path(done.lora).is_file()
    assert queue.poll().id == second.id  # the next one starts only now
    assert queue.wait(second.id).status == "done"
    progress = queue.progress(first.id)
    assert progress["last"]["step"] == progress["last"]["total_steps"] == 10
    assert progress["saves"] == [] and progress["output_dir"] == str(project / "out-a")
    assert "LoRA written" in queue.log_tail(first.id)


def test_stop_leaves_a_state_that_resume_continues(project: Path, tiny_sd1_dir: Path) -> None:
    queue = RunQueue(project / "queue")
    run = queue.submit(write_run(project, "long", epochs=20, model=tiny_sd1_dir))  # 200 steps
    queue.poll()
    deadline = time.monotonic() + 300
    while not any(e["event"] == "step" and e["step"] >= 3 for e in read_events(queue.events_path(run.id))):
        assert queue.get(run.id).status == "running" and time.monotonic() < deadline
        time.sleep(0.1)
    queue.stop(run.id)
    stopped = queue.wait(run.id)
    assert stopped.status == "stopped" and stopped.returncode == 130
    assert (Path(stopped.state) / "state.json").is_file() and Path(stopped.lora).is_file()
    stopped_at = queue.progress(run.id)["last"]["step"]
    assert 3 <= stopped_at < 200
    resumed = queue.resume(run.id)
    assert resumed.resume_of == run.id and any(o.startswith("train.resume=") for o in resumed.overrides)
    queue.stop(resumed.id)  # a queued run is cancelled, not started
    assert queue.get(resumed.id).status == "cancelled"
    again = queue.resume(run.id)
    finished = queue.wait(again.id)
    assert finished.status == "done", queue.log_tail(again.id)
    steps = [e for e in read_events(queue.events_path(again.id)) if e["event"] == "step"]
    assert steps[0]["step"] > stopped_at - 1 and steps[-1]["step"] == 200  # continued, not restarted


def test_a_restarted_ui_finds_its_running_run(project: Path, tiny_sd1_dir: Path) -> None:
    queue = RunQueue(project / "queue")
    run = queue.submit(write_run(project, "a", epochs=2, model=tiny_sd1_dir))
    queue.poll()
    later = RunQueue(project / "queue")  # the UI process restarted; the training did not
    assert later.get(run.id).status == "running"
    assert later.wait(run.id).status == "done"
    queue._procs[run.id].wait()  # reap our child (the first UI) so no zombie outlives the test


def test_failed_run_keeps_its_message_and_queue_survives(project: Path) -> None:
    queue = RunQueue(project / "queue")
    bad = queue.submit(write_run(project, "bad"))  # the model path does not exist
    failed = queue.wait(bad.id)
    assert failed.status == "failed" and failed.returncode not in (0, None)
    assert "missing" in (failed.message or "")
    assert [r.id for r in RunQueue(project / "queue").runs()] == [bad.id]
    with pytest.raises(LorakilnError, match="no saved state"):
        queue.resume(bad.id)
    with pytest.raises(LorakilnError, match="no such run config"):
        queue.submit(project / "nope.toml")
    (project / "queue" / "queue.json").write_text("{", encoding="utf-8")
    with pytest.raises(LorakilnError, match="not valid JSON"):
        RunQueue(project / "queue")


def test_the_check_runs_at_submit_and_again_at_start(project: Path) -> None:
    """The web UI's sandbox check: a run refused at submit is never queued; a TOML changed after
    submit (or a hand-edited queue.json) is refused when its turn comes, and the next run starts."""
    refuse: set[str] = set()

    def check(config: Path, overrides: list[str]) -> None:
        if config.stem in refuse:
            raise LorakilnError(f"{config.name}: outside the project")

    queue = RunQueue(project / "queue", check=check)
    refuse.add("a")
    with pytest.raises(LorakilnError, match="outside the project"):
        queue.submit(write_run(project, "a"))
    assert queue.runs() == []
    refuse.clear()
    first, second = queue.submit(write_run(project, "b")), queue.submit(write_run(project, "c"))
    refuse.add("b")  # changed while queued
    running = queue.poll()
    assert queue.get(first.id).status == "failed" and queue.get(first.id).pid is None
    assert "refused: b.toml: outside the project" in (queue.get(first.id).message or "")
    assert running is not None and running.id == second.id
    assert queue.wait(second.id).status == "failed"  # its model does not exist: it ran, and failed


def test_a_state_swap_killed_between_renames_is_still_offered_for_resume(project: Path) -> None:
    """A kill between `<name>-state` → `.<name>-state.old` and the new folder's rename leaves no
    `<name>-state`; the queue offers the complete state beside it, as the trainer would load it."""
    import json

    from lorakiln.training.recovery import STATE_FILES
    from lorakiln.ui.runs import Run

    queue = RunQueue(project / "queue")
    out = project / "out-x"
    old = out / ".last-state.old"
    old.mkdir(parents=True)
    for name in STATE_FILES:
        (old / name).write_bytes(b"x")
    (old / "state.json").write_text(json.dumps({"position": {"global_step": 4}}), encoding="utf-8")
    run = Run(id="0001-x", config=str(project / "x.toml"))
    queue.events_path(run.id).parent.mkdir(parents=True, exist_ok=True)
    queue.events_path(run.id).write_text(json.dumps({"event": "start", "output_dir": str(out),
                                                     "output_name": "last"}) + "\n", encoding="utf-8")
    assert queue._latest_state(run) == str(old)
    (old / "state.json").unlink()  # incomplete: nothing to offer
    assert queue._latest_state(run) is None
