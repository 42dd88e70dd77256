"""The Train tab's form comes from the config schema and writes the run TOML the CLI trains."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.config.load import load_config
from lorakiln.config.schema import SECTIONS
from lorakiln.errors import ConfigError
from lorakiln.ui.forms import (
    GROUP_ORDER,
    GROUPS,
    SERVER_ONLY_KEYS,
    field_specs,
    load_run_toml,
    raw_from_values,
    save_run_toml,
    step_summary,
)
from lorakiln.ui.labels import ESSENTIALS

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "config.toml"


def test_every_schema_key_is_a_field_with_help_and_known_group() -> None:
    specs = {s.key: s for s in field_specs()}
    every = {f"{sec}.{name}" for sec, model in SECTIONS.items() for name in model.model_fields}
    assert set(specs) == every - SERVER_ONLY_KEYS and "model.allow_pickle" in SERVER_ONLY_KEYS  # never a form field
    assert all(key in specs for keys in GROUPS.values() for key in keys)  # no stale group entry
    assert all(key in specs for key in ESSENTIALS)
    placed = [*ESSENTIALS, *(k for keys in GROUPS.values() for k in keys)]
    assert sorted(placed) == sorted(specs), "every key has exactly one place"  # none left to the catch-all
    assert all(s.help for s in specs.values())
    labels = [s.label for s in specs.values()]
    assert len(set(labels)) == len(labels) and all(not lb.islower() or " " in lb for lb in labels)
    assert specs["train.unet_lr"].label == "U-Net LR" and specs["train.unet_lr"].group == "essentials"
    assert specs["train.noise_offset"].group == "Advanced"
    assert (specs["network.network_dim"].minimum, specs["network.network_dim"].maximum) == (1, 1024)
    assert specs["train.learning_rate"].minimum is None  # `gt=0`: no inclusive bound a widget could enforce
    assert specs["train.optimizer_type"].kind == "choice" and "Prodigy" in specs["train.optimizer_type"].choices
    assert specs["network.network_module"].choices == ("lora", "locon", "loha", "lokr")
    assert (specs["network.network_dim"].kind, specs["network.dora_wd"].kind) == ("int", "bool")
    assert specs["train.text_encoder_lr"].optional and not specs["train.train_batch_size"].optional
    groups = [s.group for s in field_specs()]
    assert groups == sorted(groups, key=GROUP_ORDER.index) and groups[0] == "essentials"


def test_quickstart_round_trips_through_the_form(tmp_path: Path) -> None:
    values = load_run_toml(QUICKSTART)
    assert values["train.unet_lr"] == 1e-3 and values["train.train_batch_size"] == 2
    assert values["train.lr_warmup_steps"] == 0  # a default the file does not set
    out = save_run_toml(tmp_path / "run.toml", values)
    raw = tomllib.loads(out.read_text(encoding="utf-8"))
    assert "lr_warmup_steps" not in raw["train"]  # defaults are not written out
    assert raw["network"] == {"network_alpha": 8}  # network_dim 8 is the default
    original = load_config(QUICKSTART)
    for key in ("unet_lr", "text_encoder_lr", "optimizer_type", "max_train_epochs", "lr_scheduler"):
        assert getattr(load_config(out).train, key) == getattr(original.train, key)


def test_a_bad_value_names_the_key_and_writes_nothing(tmp_path: Path) -> None:
    values = load_run_toml(QUICKSTART) | {"network.network_dim": 0}
    with pytest.raises(ConfigError, match="network_dim"):
        save_run_toml(tmp_path / "run.toml", values)
    assert not (tmp_path / "run.toml").exists()
    assert raw_from_values({"preset": "kohya-character", "train.seed": 7}) == {"preset": "kohya-character",
                                                                              "train": {"seed": 7}}


def test_live_step_count_is_the_trainers_and_errors_are_messages(tmp_path: Path) -> None:
    sub = tmp_path / "train" / "15_anantn"
    sub.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(sub / f"p{i}.png")
    values = load_run_toml(QUICKSTART) | {"data.train_data_dir": "train", "train.max_train_epochs": 5,
                                          "train.train_batch_size": 1, "data.resolution": "64,64"}
    text = step_summary(values, tmp_path)
    assert "225" in text  # 3 images × 15 repeats × 5 epochs / batch 1
    assert step_summary(values | {"data.train_data_dir": "nowhere"}, tmp_path).startswith("error:")
