"""Fixtures for training tests: a small kohya dataset and run configs on the tiny SD1 model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from training_support import draw_dataset  # noqa: F401 - fixtures and tests here use it by this name

from lorakiln.config.load import build_config
from lorakiln.config.schema import RunConfig


@pytest.fixture(scope="session", autouse=True)
def lorakiln_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build `tiny:sd1` once per session into a private cache (never the user's)."""
    home = tmp_path_factory.mktemp("lorakiln-home")
    old = os.environ.get("LORAKILN_HOME")
    os.environ["LORAKILN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("LORAKILN_HOME", None)
    else:
        os.environ["LORAKILN_HOME"] = old


def _raw_run() -> dict[str, Any]:
    return {
        "model": {"pretrained_model": "tiny:sd1"},
        "data": {"train_data_dir": "train", "resolution": 64, "min_bucket_reso": 64,
                 "max_bucket_reso": 128},
        "network": {"network_dim": 4, "network_alpha": 2},
        "train": {"train_batch_size": 2, "max_train_epochs": 1, "unet_lr": 1e-3,
                  "text_encoder_lr": 5e-4, "seed": 1},
        "output": {"output_dir": "out", "output_name": "last"},
        # The per-file signals (validation loss, drift at 6 strengths) measure every saved LoRA;
        # off here, on (`validation__signals=True`) in the tests of signals and recommendation.
        "validation": {"signals": False},
    }


def make_run_config(root: Path, **overrides: Any) -> RunConfig:
    """A RunConfig over a fresh 4-image dataset in `root`; keyword args are dotted overrides
    (`train__unet_lr=2e-4` for `train.unet_lr`). `validation.signals` is off unless overridden."""
    draw_dataset(root / "train")
    sets = [f"{k.replace('__', '.')}={_toml(v)}" for k, v in overrides.items()]
    return build_config(_raw_run(), base_dir=root, overrides=sets)


def write_run_toml(root: Path, **overrides: Any) -> Path:
    """The same run as `make_run_config`, as `root/run.toml` for `lorakiln train` subprocesses."""
    import tomli_w

    from lorakiln.config.load import apply_overrides

    draw_dataset(root / "train")
    sets = [f"{k.replace('__', '.')}={_toml(v)}" for k, v in overrides.items()]
    path = root / "run.toml"
    path.write_text(tomli_w.dumps(apply_overrides(_raw_run(), sets)), encoding="utf-8")
    return path


@pytest.fixture
def run_config(tmp_path: Path) -> Callable[..., RunConfig]:
    """Factory: a RunConfig over a fresh 4-image dataset; keyword args are dotted overrides."""
    def make(**overrides: Any) -> RunConfig:
        return make_run_config(tmp_path, **overrides)
    return make


@pytest.fixture(scope="session")
def config_maker() -> Callable[..., RunConfig]:
    """`make_run_config` for fixtures wider than one test (e.g. a module's reference run)."""
    return make_run_config


@pytest.fixture
def run_toml(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `tmp_path/run.toml` for the same run as `run_config`, for `lorakiln train`."""
    def make(**overrides: Any) -> Path:
        return write_run_toml(tmp_path, **overrides)
    return make


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
