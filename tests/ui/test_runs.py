"""The UI's run queue: on disk, one run at a time in its own process, stop → state → resume,
and a UI restart that finds its runs again. The end-to-end runs are a real `lorakiln train` on
tiny SD1; the progress and stop records are checked on hand-written events files and queues."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
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
[validation]
signals = false  # measured and shown in test_train_tab.py; these runs test the queue
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
    phases = [e for e in read_events(queue.events_path(first.id)) if e["event"] == "phase"]
    names = [p["name"] for i, p in enumerate(phases) if i == 0 or phases[i - 1]["name"] != p["name"]]
    assert names == ["preparing", "loading model", "caching latents", "training", "saving", "final grids"]
    caching = [(p["done"], p["total"]) for p in phases if p["name"] == "caching latents"]
    assert caching[0] == (0, 2) and caching[-1] == (2, 2)
    assert progress["phase"]["name"] == "final grids" and progress["recent"][-1][0] == 10
    with pytest.raises(LorakilnError, match=f"run {first.id} already ended \\(done\\); nothing to stop"):
        queue.stop(first.id)


def test_stop_leaves_a_state_that_resume_continues(project: Path, tiny_sd1_dir: Path) -> None:
    queue = RunQueue(project / "queue")
    run = queue.submit(write_run(project, "long", epochs=10, model=tiny_sd1_dir))  # 100 steps
    queue.poll()
    deadline = time.monotonic() + 300
    while not any(e["event"] == "step" and e["step"] >= 3 for e in read_events(queue.events_path(run.id))):
        assert queue.get(run.id).status == "running" and time.monotonic() < deadline
        time.sleep(0.1)
    queue.stop(run.id)
    assert RunQueue(project / "queue").get(run.id).stop_requested is not None  # every UI sees it
    stopped = queue.wait(run.id)
    assert stopped.status == "stopped" and stopped.returncode == 130
    assert (Path(stopped.state) / "state.json").is_file() and Path(stopped.lora).is_file()
    stopped_at = queue.progress(run.id)["last"]["step"]
    assert 3 <= stopped_at < 100
    resumed = queue.resume(run.id)
    assert resumed.resume_of == run.id and any(o.startswith("train.resume=") for o in resumed.overrides)
    queue.stop(resumed.id)  # a queued run is cancelled, not started
    assert queue.get(resumed.id).status == "cancelled"
    again = queue.resume(run.id)
    finished = queue.wait(again.id)
    assert finished.status == "done", queue.log_tail(again.id)
    steps = [e for e in read_events(queue.events_path(again.id)) if e["event"] == "step"]
    assert steps[0]["step"] > stopped_at - 1 and steps[-1]["step"] == 100  # continued, not restarted
    losses = queue.progress(again.id)["losses"]  # the chart goes on from the stopped run's curve
    assert [s for s, _ in losses] == list(range(1, 101))
    assert losses[:stopped_at] == queue.progress(run.id)["losses"][:stopped_at]


def test_a_run_on_two_processes_stops_with_a_state_and_resumes_on_two(project: Path, tiny_sd1_dir: Path) -> None:
    """The "processes" field: the queue starts `lorakiln train --num-processes 2`; Stop's SIGINT
    reaches both processes through the launcher, which save once and end as a stop (130), and
    Resume runs on 2 processes again."""
    queue = RunQueue(project / "queue")
    run = queue.submit(write_run(project, "two", epochs=20, model=tiny_sd1_dir), processes=2)
    queue.poll()
    deadline = time.monotonic() + 300
    while not any(e["event"] == "step" and e["step"] >= 2 for e in read_events(queue.events_path(run.id))):
        assert queue.get(run.id).status == "running" and time.monotonic() < deadline, queue.log_tail(run.id)
        time.sleep(0.1)
    queue.stop(run.id)
    stopped = queue.wait(run.id)
    assert stopped.status == "stopped" and stopped.returncode == 130, queue.log_tail(run.id)
    assert (Path(stopped.state) / "state.json").is_file() and Path(stopped.lora).is_file()
    log = queue.log_tail(run.id, 400)
    assert "2 processes: global batch" in log and "Traceback" not in log, log
    assert [e["event"] for e in read_events(queue.events_path(run.id))].count("stopped") == 1
    again = queue.resume(run.id)
    assert again.processes == 2
    finished = queue.wait(again.id)
    assert finished.status == "done", queue.log_tail(again.id)
    total = [e for e in read_events(queue.events_path(again.id)) if e["event"] == "step"][-1]
    assert total["step"] == total["total_steps"]


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


# -- progress and stop records, on hand-written events files (no training) -------------------


def write_events(queue: RunQueue, run_id: str, *events: dict, mode: str = "w") -> None:
    path = queue.events_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)


def steps(first: int, last: int, offset: float = 0.0, t0: float = 0.0) -> list[dict]:
    return [{"event": "step", "step": n, "total_steps": 20, "loss": n + offset, "time": t0 + n}
            for n in range(first, last + 1)]


def add_run(queue: RunQueue, run_id: str, **fields) -> None:
    from lorakiln.ui.runs import Run

    queue._runs[run_id] = Run(id=run_id, config="/p/run.toml", status=fields.pop("status", "stopped"), **fields)
    queue._save()


def test_a_resumed_runs_losses_start_with_the_runs_it_continues(tmp_path: Path) -> None:
    """a: steps 1–10 (stopped at 10, but its last state is step 7); b resumes a's state at 7 and
    stops at 15 (state 12); c resumes b at 12. c's chart: a's 1–7, b's 8–12, its own from 13."""
    queue = RunQueue(tmp_path / "queue")
    add_run(queue, "a")
    add_run(queue, "b", resume_of="a")
    add_run(queue, "c", resume_of="b", status="running")
    write_events(queue, "a", *steps(1, 10, offset=0.1))
    write_events(queue, "b", *steps(8, 15, offset=0.2))
    write_events(queue, "c", {"event": "phase", "name": "training", "time": 99.0}, *steps(13, 14, offset=0.3))
    losses = queue.progress("c")["losses"]
    assert [s for s, _ in losses] == list(range(1, 15))
    assert {round(v - s, 1) for s, v in losses[:7]} == {0.1} and {round(v - s, 1) for s, v in losses[7:12]} == {0.2}
    assert [v for s, v in losses[12:]] == pytest.approx([13.3, 14.3])
    assert queue.progress("b")["losses"][-1] == (15, pytest.approx(15.2))  # b's own chart still ends where b did
    write_events(queue, "c", *steps(15, 16, offset=0.3), mode="a")  # read incrementally as it grows
    assert queue.progress("c")["losses"][-1] == (16, pytest.approx(16.3)) and queue.progress("c")["last"]["step"] == 16


def test_a_resumed_run_before_its_first_step_cuts_at_its_states_step(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path / "queue")
    state = tmp_path / "out" / "last-state"
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"position": {"global_step": 4}}), encoding="utf-8")
    add_run(queue, "a")
    add_run(queue, "b", resume_of="a", status="running", overrides=[f"train.resume={json.dumps(str(state))}"])
    write_events(queue, "a", *steps(1, 6))
    assert [s for s, _ in queue.progress("b")["losses"]] == [1, 2, 3, 4]
    add_run(queue, "loop", resume_of="loop")  # a hand-edited queue.json cannot make it recurse
    assert queue.progress("loop")["losses"] == []


def test_progress_phase_and_recent_steps_are_read_incrementally(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path / "queue")
    add_run(queue, "r", status="running")
    start = {"event": "start", "output_dir": "/o", "output_name": "last", "time": 0.0}
    write_events(queue, "r", start, {"event": "phase", "name": "caching latents", "done": 3, "total": 10,
                                     "time": 0.5})
    first = queue.progress("r")
    assert first["phase"]["done"] == 3 and first["last"] is None and first["recent"] == []
    assert first["output_dir"] == "/o"
    write_events(queue, "r", *steps(1, 30, t0=1.0), mode="a")
    with queue.events_path("r").open("a", encoding="utf-8") as fh:
        fh.write('{"event": "phase", "name": "sav')  # the trainer is mid-line
    now = queue.progress("r")
    assert now["recent"] == [(n, 1.0 + n) for n in range(11, 31)] and now["last"]["step"] == 30
    assert now["phase"]["name"] == "caching latents"  # the half-written phase waits
    with queue.events_path("r").open("a", encoding="utf-8") as fh:
        fh.write('ing", "time": 40.0}\n{"event": "save", "path": "/o/x.safetensors", "time": 41.0}\n')
    done = queue.progress("r")
    assert done["phase"]["name"] == "saving" and done["saves"] == ["/o/x.safetensors"]


def test_stop_on_an_ended_run_says_so(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path / "queue")
    for status in ("done", "stopped", "failed", "cancelled", "interrupted"):
        add_run(queue, f"0003-{status}", status=status)
        with pytest.raises(LorakilnError, match=f"run 0003-{status} already ended \\({status}\\); nothing to stop"):
            queue.stop(f"0003-{status}")


def test_stop_requested_is_recorded_once_and_kept_across_a_ui_restart(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that ignores SIGINT stands in for a trainer busy saving: the request is on disk,
    so a second UI shows the run stopping; a second Stop does not signal again (it would make the
    trainer exit without saving)."""
    import lorakiln.ui.runs as runs_module

    queue = RunQueue(tmp_path / "queue")
    marker = str(queue.events_path("0001-r"))
    code = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ok', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"  # SIGINT ignored now
        add_run(queue, "0001-r", status="running", pid=proc.pid)
        sent: list[int] = []
        real_kill = runs_module.os.kill

        def spy(pid: int, sig: int) -> None:
            sent.append(sig)
            real_kill(pid, sig)

        monkeypatch.setattr(runs_module.os, "kill", spy)
        before = time.time()
        stopping = queue.stop("0001-r")
        again = RunQueue(tmp_path / "queue").stop("0001-r")  # another UI presses Stop too
        monkeypatch.undo()
        assert stopping.status == again.status == "running" and sent.count(signal.SIGINT) == 1
        later = RunQueue(tmp_path / "queue").get("0001-r")
        assert later.status == "running" and later.stop_requested is not None and later.stop_requested >= before
    finally:
        proc.kill()
        proc.wait()
    ended = RunQueue(tmp_path / "queue").get("0001-r")
    assert ended.status == "interrupted" and ended.stop_requested is not None


def test_a_queue_json_from_before_stop_requested_loads(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    old = {"id": "0001-a", "config": "/p/a.toml", "overrides": [], "status": "done", "created": 1.0,
           "started": 2.0, "ended": 3.0, "pid": None, "returncode": 0, "resume_of": None, "message": None,
           "lora": "/o/a.safetensors", "state": None, "a_field_from_a_later_version": 1}
    (folder / "queue.json").write_text(json.dumps([old]), encoding="utf-8")
    queue = RunQueue(folder)
    run = queue.get("0001-a")
    assert run.status == "done" and run.stop_requested is None and run.lora == "/o/a.safetensors"
    queue.submit(_toml(tmp_path))
    rows = json.loads((folder / "queue.json").read_text(encoding="utf-8"))
    assert [r["stop_requested"] for r in rows] == [None, None]


def _toml(folder: Path) -> Path:
    path = folder / "b.toml"
    path.write_text("", encoding="utf-8")
    return path
