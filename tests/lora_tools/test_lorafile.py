"""The toolbox's shared kohya file reader/writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import read_kohya_lora, write_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import factorize
from lorakiln.models.family import SD1

KEYS = ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_self_attn_q_proj")


def test_write_then_read_gives_the_same_deltas_and_dynamic_metadata(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    modules = {KEYS[0]: factorize(torch.randn(8, 8, 1, 1, generator=g), "fixed", 2, alpha=1.0),
               KEYS[1]: factorize(torch.randn(16, 16, generator=g), "fixed", 4)}
    path = write_kohya_lora(tmp_path / "x.safetensors", modules, SD1, extra_metadata={"ss_training_comment": "hi"})
    with safe_open(str(path), "pt") as fh:
        md = fh.metadata()
    assert md["ss_network_dim"] == "Dynamic" and md["ss_network_alpha"] == "Dynamic"
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_training_comment"] == "hi"
    assert md["modelspec.title"] == "x" and md["sshs_model_hash"]
    lora = read_kohya_lora(path)
    assert lora.family is SD1 and set(lora.modules) == set(KEYS)
    for key, f in modules.items():
        torch.testing.assert_close(lora.lora_factors(key).delta(), f.delta())


def test_refusals(tmp_path: Path) -> None:
    f = {KEYS[1]: factorize(torch.eye(4), "fixed", 4)}
    first = write_kohya_lora(tmp_path / "a.safetensors", f, SD1)
    with pytest.raises(LorakilnError, match="exists; pass --force"):
        write_kohya_lora(first, f, SD1)
    with pytest.raises(LorakilnError, match="never writes over its inputs"):
        write_kohya_lora(first, f, SD1, force=True, inputs=[first])
    with pytest.raises(LorakilnError, match="must end in .safetensors"):
        write_kohya_lora(tmp_path / "a.pt", f, SD1)
    with pytest.raises(LorakilnError, match="no such LoRA file"):
        read_kohya_lora(tmp_path / "missing.safetensors")
