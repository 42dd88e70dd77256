"""The Train tab's form: component values, the run TOML's load and save (and what changed),
the live step count, presets, and the checks Start makes before it queues anything."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lorakiln.errors import ConfigError
from lorakiln.ui import train_form as tab
from lorakiln.ui.forms import field_specs
from lorakiln.ui.sandbox import Sandbox


def test_short_forms_in_a_hand_written_toml_load(project: Sandbox) -> None:
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


def test_form_save_load_round_trip_and_total_steps(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(3)
    assert tab.save_form(project, "run.toml", extra, *components).startswith("saved")
    text = (project.project / "run.toml").read_text(encoding="utf-8")
    assert 'train_data_dir = "train"' in text and "network_dim = 4" in text
    extra2, msg, *loaded = tab.load_form(project, "run.toml")
    assert msg.startswith("loaded") and loaded == components
    keys = [s.key for s in field_specs()]
    loaded[keys.index("train.max_train_epochs")] = 5
    said = tab.save_form(project, "run.toml", extra2, *loaded)
    assert said == "saved run.toml: Epochs: 3 → 5", said  # every write says what it changed
    assert tab.save_form(project, "run.toml", extra2, *loaded) == "saved run.toml: no changes"
    loaded[keys.index("train.max_train_epochs")] = 3
    tab.save_form(project, "run.toml", extra2, *loaded)
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


def test_presets_fill_the_form(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(3)
    keys = [s.key for s in field_specs()]
    extra2, msg, *filled = tab.apply_preset("kohya-character", {"preset": "old"}, *components)
    assert msg.startswith("applied preset kohya-character") and "preset" not in extra2
    assert "Rank (dim): 4 → 128" in msg and "Output folder" not in msg  # what the preset changed
    values = tab.form_values(extra2, tuple(filled))
    assert values["network.network_dim"] == 128 and values["train.unet_lr"] == 1e-4  # the preset's table
    assert values["data.train_data_dir"] == "train"  # the folders stay
    assert filled[keys.index("model.pretrained_model")] == components[keys.index("model.pretrained_model")]
    assert tab.apply_preset("nope", extra, *components)[1].startswith("error: unknown preset 'nope'")


def test_changes_name_fields_by_label_and_ignore_unset_spellings() -> None:
    before = {"train.unet_lr": None, "network.network_dim": 8, "train.optimizer_args": [], "preset": "x"}
    after = {"train.unet_lr": 1e-4, "network.network_dim": 8, "train.optimizer_args": None}
    assert tab.changes(before, after) == ["U-Net LR: unset → 0.0001", "preset: x → unset"]


def test_field_errors_put_each_line_beside_its_field() -> None:
    msg = ("invalid config the form:\n  something else\n  train.learning_rate = -1: Input should be greater than 0\n"
           "  train.lr_scheduler_power = 0: Input should be greater than 0\n  - and how to fix it")
    found = tab.field_errors(msg)
    assert set(found) == {"train.learning_rate", "train.lr_scheduler_power", tab.FILE_KEY}, found
    assert "-1" in found["train.learning_rate"] and "lr_scheduler_power" not in found["train.learning_rate"]
    assert found["train.lr_scheduler_power"].endswith("and how to fix it") and found[tab.FILE_KEY] == "something else"
    assert tab.field_errors("no images found in train", dataset=True) == {
        tab.DATASET_KEY: "no images found in train"}


def test_start_problems_are_what_dry_run_refuses(project: Sandbox, tiny_form: Callable) -> None:
    extra, components = tiny_form(1)
    keys = [s.key for s in field_specs()]
    assert tab.start_problems(project, "run.toml", extra, *components) == {}
    bad = list(components)
    bad[keys.index("train.learning_rate")] = -1.0
    problems = tab.start_problems(project, "run.toml", extra, *bad)
    assert list(problems) == ["train.learning_rate"] and "greater than 0" in problems["train.learning_rate"]
    empty = project.project / "empty"
    empty.mkdir()
    bad = list(components)
    bad[keys.index("data.train_data_dir")] = "empty"  # an empty dataset: refused at once, not 46 s later
    problems = tab.start_problems(project, "run.toml", extra, *bad)
    assert list(problems) == ["data.train_data_dir"], problems
    bad[keys.index("data.train_data_dir")] = "/etc"  # outside the server's folders
    assert "outside" in tab.start_problems(project, "run.toml", extra, *bad)["data.train_data_dir"]
    assert not (project.project / "run.toml").exists()  # checks write nothing
