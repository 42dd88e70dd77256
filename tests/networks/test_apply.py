"""Applying LoRA files to a loaded model for generation: equals fused weights, strengths, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakiln.errors import LorakilnError
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network


def _unet_out(bundle) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    hidden = torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        return bundle.unet(x, torch.tensor([500]), hidden).sample


def _te_out(bundle) -> torch.Tensor:
    ids = bundle.tokenizers[0](["photo of zwx"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return bundle.text_encoders[0](ids)[0]


@pytest.fixture
def lora_file(tmp_path: Path) -> Path:
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=4, alpha=2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, module in net.loras():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=gen) * 0.3)
    path = save_kohya_lora(net, tmp_path / "style.safetensors",
                           build_metadata(TrainingInfo(output_name="style"), net), dtype="float")
    net.remove()
    return path


def test_applied_file_equals_fused_weights(lora_file: Path) -> None:
    from lorakiln.models.names.kohya import kohya_to_diffusers_module
    from lorakiln.networks.export import read_lora_file
    from lorakiln.networks.lora import delta_weight

    hooked, fused = build_tiny_sd1_bundle(seed=0), build_tiny_sd1_bundle(seed=0)
    applied = apply_lora_file(hooked, lora_file, te=0.7, unet=0.5)
    tensors, _ = read_lora_file(lora_file)
    with torch.no_grad():
        for key in {k.split(".")[0] for k in tensors}:
            component, path = kohya_to_diffusers_module(key, SD1)
            root = fused.unet if component == "unet" else fused.text_encoders[0]
            module = root.get_submodule(path if component == "unet" else path.removeprefix("text_model."))
            strength = 0.5 if component == "unet" else 0.7
            down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
            scale = float(tensors[f"{key}.alpha"]) / down.shape[0]
            module.weight += strength * delta_weight(up, down, scale, module.weight.shape)
    torch.testing.assert_close(_unet_out(hooked), _unet_out(fused), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_te_out(hooked), _te_out(fused), rtol=1e-4, atol=1e-5)
    assert len(applied.modules) == 192 + 72


def test_strength_zero_and_remove_restore_the_base(lora_file: Path) -> None:
    bundle = build_tiny_sd1_bundle(seed=0)
    base = _unet_out(bundle)
    applied = apply_lora_file(bundle, lora_file)
    assert not torch.allclose(_unet_out(bundle), base)
    applied.set_strength(0.0)
    torch.testing.assert_close(_unet_out(bundle), base)
    applied.set_strength(1.0)
    applied.remove()
    torch.testing.assert_close(_unet_out(bundle), base)


def test_lora_for_another_family_is_refused(lora_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k.replace("lora_te_", "lora_te1_"): v for k, v in load_file(str(lora_file)).items()}
    other = tmp_path / "xl.safetensors"
    save_file(tensors, str(other), {"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(LorakilnError, match="xl.safetensors is a LoRA for sdxl"):
        apply_lora_file(build_tiny_sd1_bundle(seed=0), other)
