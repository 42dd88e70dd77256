"""`pretrained_model = "toy"`: a clear error naming the build command when this install has no
toy weights, and the config keeps "toy" as a name, not a path."""

from __future__ import annotations

import pytest

from lorakiln.config.load import build_config
from lorakiln.errors import ModelLoadError
from lorakiln.models.loading import load_base_model


def test_missing_toy_weights_say_how_to_build_them(monkeypatch) -> None:
    import lorakiln.models.toy as toy

    monkeypatch.setattr(toy, "TOY_WEIGHTS", "toyworld/weights/not-here.safetensors")
    with pytest.raises(ModelLoadError, match="lorakiln toy pretrain --out"):
        load_base_model("toy")


def test_toy_is_not_resolved_as_a_path(tmp_path) -> None:
    cfg = build_config({"model": {"pretrained_model": "toy"}, "data": {"train_data_dir": "x"}}, base_dir=tmp_path)
    assert cfg.model.pretrained_model == "toy"
