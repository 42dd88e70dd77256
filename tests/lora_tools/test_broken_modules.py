"""Damaged modules the broken-input corpus does not hold: a LoHa whose factors do not multiply
out, and an alpha that is not one number — refused by name through the CLI, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorakiln.cli import main

KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # 32 → 32 on tiny:sd1 (a Linear: merge knows its shape)
SD1 = {"ss_base_model_version": "sd_v1"}


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path_factory.getbasetemp() / "lorakiln-home"))


def _loha(path: Path, w1_b_rows: int) -> Path:
    """A LoHa module; with `w1_b_rows` != 2 its first Hadamard factor does not multiply out."""
    save_file({f"{KEY}.hada_w1_a": torch.ones(32, 2), f"{KEY}.hada_w1_b": torch.ones(w1_b_rows, 32),
               f"{KEY}.hada_w2_a": torch.ones(32, 2), f"{KEY}.hada_w2_b": torch.ones(2, 32),
               f"{KEY}.alpha": torch.tensor(2.0)}, str(path), SD1)
    return path


@pytest.mark.parametrize("verb", ["merge", "generate"])
def test_loha_factors_that_do_not_multiply_out(verb: str, tmp_path: Path, home: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _loha(tmp_path / "good.safetensors", 2)
    bad = _loha(tmp_path / "bad.safetensors", 3)
    argv = {"merge": ["lora", "merge", str(tmp_path / "out.safetensors"), "--lora", str(bad), "--rank", "2"],
            "generate": ["generate", "--model", "tiny:sd1", "--prompt", "a <lora:bad:1>", "--lora-dir",
                         str(tmp_path), "--steps", "1", "--size", "64x64", "--output-dir", str(tmp_path / "img")]}
    assert main(argv[verb]) == 2
    err = capsys.readouterr().err
    assert f"bad.safetensors: module {KEY} (loha)" in err and "Traceback" not in err
    good_argv = [a.replace("bad", "good") for a in argv[verb]]
    assert main(good_argv) == 0, capsys.readouterr().err  # the same command on a sound LoHa works


def test_an_alpha_that_is_not_one_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "alpha.safetensors"
    save_file({f"{KEY}.lora_down.weight": torch.ones(2, 32), f"{KEY}.lora_up.weight": torch.ones(32, 2),
               f"{KEY}.alpha": torch.ones(2)}, str(path), SD1)
    for argv in (["lora", "info", str(path)], ["lora", "resize", str(path), str(tmp_path / "o.safetensors"),
                                                "--rank", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{KEY}.alpha has shape [2]; an alpha is one number" in err and "Traceback" not in err
