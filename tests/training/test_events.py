"""`lorakiln train --events FILE`: the run's events as JSON lines for the UI and scripts."""

from __future__ import annotations

import json
from pathlib import Path

from training_support import draw_dataset

from lorakiln.cli import main
from lorakiln.training.events import EventsFile, EventsTail, read_events

RUN_TOML = """
[model]
pretrained_model = "tiny:sd1"
[data]
train_data_dir = "train"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
[network]
network_dim = 4
[train]
train_batch_size = 2
max_train_epochs = 2
seed = 1
[output]
output_dir = "out"
output_name = "last"
save_every_n_epochs = 1
[validation]
signals = false  # their events: test_file_signals.py, and through the UI test_train_tab.py
"""


def test_train_writes_start_steps_saves_and_done(tmp_path: Path) -> None:
    draw_dataset(tmp_path / "train")
    (tmp_path / "run.toml").write_text(RUN_TOML, encoding="utf-8")
    events_path = tmp_path / "events.jsonl"
    assert main(["train", str(tmp_path / "run.toml"), "--events", str(events_path)]) == 0
    events = read_events(events_path)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert events[0]["output_name"] == "last" and events[0]["output_dir"] == str(tmp_path / "out")
    steps = [e for e in events if e["event"] == "step"]
    total = steps[0]["total_steps"]
    assert total == 4 * 5 * 2 // 2  # 4 images × 5 repeats × 2 epochs / batch 2
    assert steps[-1]["step"] == total and steps[-1]["eta"] == 0
    # no samples in this run: the time left is the steps' alone, and none are left at the end
    assert steps[-1]["time_left"] == 0 and steps[-1]["renders_left"] == 0
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})
    assert {s["epoch"] for s in steps} == {1, 2}
    saves = [Path(e["path"]).name for e in events if e["event"] == "save"]
    assert saves == ["last-000001.safetensors"]
    assert Path(events[-1]["path"]).is_file() and events[-1]["step"] == total
    assert "epoch" in kinds


def test_step_events_are_throttled_but_keep_losses_and_the_last_step(tmp_path: Path) -> None:
    sink = EventsFile(tmp_path / "e.jsonl", min_interval=3600)
    for step in range(1, 11):
        sink("step", {"step": step, "epoch": 0, "loss": 0.5 if step == 5 else None, "total_steps": 10})
    sink("save", {"path": tmp_path / "x.safetensors"})
    sink.close()
    written = read_events(tmp_path / "e.jsonl")
    assert [e.get("step") for e in written] == [1, 5, 10, None]
    assert written[1]["loss"] == 0.5 and written[-1]["path"] == str(tmp_path / "x.safetensors")


def test_first_step_is_written_on_a_freshly_booted_machine(tmp_path: Path, monkeypatch) -> None:
    """`time.monotonic()` counts from boot: a machine up for seconds must still log step 1."""
    clock = iter([5.0, 5.1, 5.2, 5.3])
    monkeypatch.setattr("lorakiln.training.events.time.monotonic", lambda: next(clock))
    sink = EventsFile(tmp_path / "e.jsonl", min_interval=3600)
    for step in range(1, 4):
        sink("step", {"step": step, "epoch": 0, "loss": None, "total_steps": 10})
    sink.close()
    assert [e["step"] for e in read_events(tmp_path / "e.jsonl")] == [1]


def test_reader_leaves_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"event": "start"}) + "\n" + '{"event": "st', encoding="utf-8")
    assert read_events(path) == [{"event": "start"}]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_a_line_cut_by_a_crash_does_not_hide_the_events_after_it(tmp_path: Path) -> None:
    """A killed trainer can leave half a line; the next run appending to the file starts after it."""
    path = tmp_path / "e.jsonl"
    path.write_text('{"event": "start"}\n{"event": "st{"event": "done"}\n{"event": "error"}\n',
                    encoding="utf-8")
    assert [e["event"] for e in read_events(path)] == ["start", "error"]
    tail = EventsTail(path).update()
    assert tail.last == {"start": {"event": "start"}, "error": {"event": "error"}}


def test_tail_follows_a_growing_file_and_a_replaced_one(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    sink = EventsFile(path, min_interval=0)
    tail = EventsTail(path)
    assert tail.update().last_step is None  # no file yet
    sink.write("start", output_dir="o", output_name="last")
    sink("phase", {"name": "caching latents", "done": 1, "total": 4})
    for step in range(1, 26):
        sink("step", {"step": step, "epoch": 0, "loss": 0.1 * step if step % 5 == 0 else None, "total_steps": 25})
    tail.update()
    assert tail.start["output_dir"] == "o" and tail.phase["done"] == 1 and tail.first_step == 1
    assert list(tail.losses) == [5, 10, 15, 20, 25] and [s for s, _ in tail.recent] == list(range(6, 26))
    sink("save", {"path": tmp_path / "x.safetensors"})
    assert tail.update().saves == [str(tmp_path / "x.safetensors")]
    sink.close()
    path.unlink()
    EventsFile(path).write("phase", name="preparing")  # a new file in its place
    assert tail.update().phase["name"] == "preparing" and tail.last_step is None and tail.saves == []


def test_caching_progress_is_reported_about_once_a_second_plus_the_last(monkeypatch) -> None:
    """A big dataset must not write one event per image: the first report, then one a second,
    and always the last (done == total)."""
    from lorakiln.training import prepare as prepare_module

    clock = iter([0.0, 0.2, 0.5, 1.1, 1.3, 1.4, 2.5, 2.6])
    monkeypatch.setattr(prepare_module.time, "monotonic", lambda: next(clock))
    seen = []
    report = prepare_module._throttled(lambda name, **info: seen.append((name, info["done"])), "caching latents")
    for done in range(8):
        report(done, 7)
    assert seen == [("caching latents", 0), ("caching latents", 3), ("caching latents", 6),
                    ("caching latents", 7)]
