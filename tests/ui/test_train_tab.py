"""The Train tab's handlers: the form round trip, total steps, and Start / Stop / Resume driven by
the timer's poll handler on real tiny-SD1 trainings (as tests/ui/test_runs.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lorakiln.errors import ConfigError
from lorakiln.ui import train_tab as tab
from lorakiln.ui.forms import field_specs
from lorakiln.ui.sandbox import Sandbox


@pytest.fixture
def project(tiny_project: Path, tiny_sd1_dir: Path) -> Iterator[Sandbox]:
    """A project with the tiny dataset in <project>/train and no run TOML, served with the tiny
    model's folder as a --models-dir."""
    box = Sandbox.for_project(tiny_project, model=[tiny_sd1_dir.parent])
    yield box
    for run in tab.queue_for(box).runs():  # never leave a training behind a failed test
        if run.status == "running":
            tab.queue_for(box).stop(run.id)
            tab.queue_for(box).wait(run.id, timeout=60)


def tiny_form(project: Sandbox, model: Path, epochs: int) -> tuple[dict, list]:
    """The new-project form, edited in its components as a user would."""
    extra, msg, *components = tab.load_form(project, "run.toml")
    assert "new form" in msg and extra == {}
    edits = {"model.pretrained_model": str(model), "data.resolution": [64, 64], "data.enable_bucket": False,
             "network.network_dim": 4, "network.network_train_unet_only": True, "train.train_batch_size": 1,
             "train.max_train_epochs": epochs, "train.seed": 1}
    specs = {s.key: i for i, s in enumerate(field_specs())}
    for key, value in edits.items():
        components[specs[key]] = tab.to_component(field_specs()[specs[key]], value)
    return extra, components


def test_short_forms_in_a_hand_written_toml_load(project: Path) -> None:
    (project.project / "run.toml").write_text('[data]\nresolution = 64\n[network]\nnetwork_dim = 4\n', encoding="utf-8")
    extra, msg, *components = tab.load_form(project, "run.toml")
    keys = [s.key for s in field_specs()]
    assert msg.startswith("loaded") and components[keys.index("data.resolution")] == "64"
    assert tab.form_values(extra, tuple(components))["data.resolution"] == 64


def test_optional_numbers_are_text_so_empty_means_unset() -> None:
    spec = next(s for s in field_specs() if s.key == "train.max_train_steps")
    assert spec.optional and tab.to_component(spec, None) == "" and tab.to_component(spec, 500) == "500"
    assert tab.from_component(spec, " ") is None and tab.from_component(spec, "500") == 500
    with pytest.raises(ConfigError, match="train.max_train_steps: 'lots' is not a number"):
        tab.from_component(spec, "lots")


def poll_until(project: Sandbox, run_id: str, done: Callable[[tuple], bool], timeout: float = 240) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        view = tab.poll_view(project, run_id)
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def test_form_save_load_round_trip_and_total_steps(project: Sandbox, tiny_sd1_dir: Path) -> None:
    extra, components = tiny_form(project, tiny_sd1_dir, epochs=3)
    assert tab.save_form(project, "run.toml", extra, *components).startswith("saved")
    text = (project.project / "run.toml").read_text(encoding="utf-8")
    assert 'train_data_dir = "train"' in text and "network_dim = 4" in text
    extra2, msg, *loaded = tab.load_form(project, "run.toml")
    assert msg.startswith("loaded") and loaded == components
    steps = tab.total_steps(project, "run.toml", extra2, *loaded)
    assert "total steps = 10 batches x 3 epochs = 30" in steps, steps
    keys = [s.key for s in field_specs()]
    bad = list(loaded)
    bad[keys.index("network.network_dim")] = 0
    msg = tab.save_form(project, "run.toml", extra2, *bad)
    assert msg.startswith("error") and "network_dim" in msg
    assert (project.project / "run.toml").read_text(encoding="utf-8") == text  # nothing written
    bad[keys.index("network.network_dim")] = 4
    bad[keys.index("data.resolution")] = "[64,"
    assert "data.resolution" in tab.save_form(project, "run.toml", extra2, *bad)
    assert tab.total_steps(project, "run.toml", extra2, *bad).startswith("error")


def test_start_reaches_done_through_the_poll_handler(project: Sandbox, tiny_sd1_dir: Path) -> None:
    assert tab.poll_view(project, "")[0] == "no runs yet"
    assert tab.stop_run(project, "").startswith("error")
    assert not (project.project / tab.RUNS_FOLDER).exists()  # polling creates no queue
    extra, components = tiny_form(project, tiny_sd1_dir, epochs=1)
    run_id, msg = tab.start_run(project, "run.toml", extra, *components)
    assert run_id and "running" in msg and (project.project / "run.toml").is_file()
    status, table, _samples, saves, log = poll_until(project, "", lambda v: ": done" in v[0] or "failed" in v[0])
    assert f"**{run_id}**: done" in status and "step 10/10" in status, log
    assert list(table["step"])[-1] == 10 and len(table) >= 1
    assert saves.endswith("last.safetensors") and Path(saves.splitlines()[-1]).is_file()
    assert "LoRA written" in log
    queue = tab.queue_table(project)
    assert list(queue["run"]) == [run_id] and list(queue["status"]) == ["done"]
    assert queue["LoRA"][0] == "last.safetensors" and queue["config"][0] == "run.toml" and queue["ended"][0]


def test_stop_then_resume_reaches_done(project: Sandbox, tiny_sd1_dir: Path) -> None:
    extra, components = tiny_form(project, tiny_sd1_dir, epochs=8)  # 80 steps
    run_id, _ = tab.start_run(project, "run.toml", extra, *components)
    poll_until(project, run_id, lambda v: "step " in v[0] and int(v[0].split("step ")[1].split("/")[0]) >= 2)
    assert "stopping" in tab.stop_run(project, run_id)
    status, *_ = poll_until(project, run_id, lambda v: ": running" not in v[0])
    assert ": stopped" in status, status
    stopped = tab.queue_for(project).get(run_id)
    assert (Path(stopped.state) / "state.json").is_file() and Path(stopped.lora).is_file()
    new_id, msg = tab.resume_run(project, run_id)
    assert new_id != run_id and f"resumes {run_id}" in msg
    status, _table, _s, saves, log = poll_until(project, new_id, lambda v: ": running" not in v[0]
                                                and ": queued" not in v[0])
    assert ": done" in status and "step 80/80" in status, log
    assert Path(saves.splitlines()[-1]).is_file()
    assert tab.resume_run(project, new_id)[1].startswith("error")  # done: nothing to resume


def test_presets_fill_the_form(project: Sandbox, tiny_sd1_dir: Path) -> None:
    extra, components = tiny_form(project, tiny_sd1_dir, epochs=3)
    keys = [s.key for s in field_specs()]
    extra2, msg, *filled = tab.apply_preset("kohya-character", {"preset": "old"}, *components)
    assert msg.startswith("applied preset kohya-character") and "preset" not in extra2
    values = tab.form_values(extra2, tuple(filled))
    assert values["network.network_dim"] == 128 and values["train.unet_lr"] == 1e-4  # the preset's table
    assert values["data.train_data_dir"] == "train"  # the folders stay
    assert filled[keys.index("model.pretrained_model")] == components[keys.index("model.pretrained_model")]
    assert tab.apply_preset("nope", extra, *components)[1].startswith("error: unknown preset 'nope'")


def test_speed_text_reads_like_a_progress_bar() -> None:
    from lorakiln.ui.train_tab import speed_text

    assert speed_text({"steps_per_s": None, "eta": None}, running=True) == " · measuring speed…"  # step 1
    assert speed_text({"steps_per_s": 2.5, "eta": 40.0}, running=True) == " · 2.50 it/s · ETA 40 s"
    assert speed_text({"steps_per_s": 1 / 47.9, "eta": 1800.0}, running=True) == " · 47.9 s/step · ETA 1800 s"
    assert speed_text({"steps_per_s": 2.5, "eta": 40.0}, running=False) == " · 2.50 it/s"  # done or stopped
    assert speed_text({"steps_per_s": None, "eta": None}, running=False) == ""
