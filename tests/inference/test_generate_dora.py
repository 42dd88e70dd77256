"""`lorakiln generate` with a DoRA file (`dora_scale`): strength 0 is the base image bit for bit,
strength 1 changes it, and a half-strength tag patches exactly ``W + 0.5·(W' − W)`` (the
A1111/ComfyUI rule, `lorakiln.networks.dora`), checked on the U-Net output against fused weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakiln.inference.generate import LoRASet, generate
from lorakiln.inference.infotext import GenerationParams
from lorakiln.models.family import SD1
from lorakiln.models.names.kohya import kohya_to_diffusers_module
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.dora import DoRAModule
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

FAST = GenerationParams(prompt="photo of zwx", steps=3, sampler="Euler", cfg_scale=7, seed=5,
                        width=64, height=64, schedule_type=None)


@pytest.fixture(scope="module")
def dora_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DoRA LoCon file with random factors and magnitudes, and each module's W' − W."""
    folder = tmp_path_factory.mktemp("dora-loras")
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=4, alpha=2, algo="locon", dora_wd=True)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, m in net.loras():
            assert isinstance(m, DoRAModule)
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.3)
            m.dora_scale.mul_(1 + 0.2 * torch.rand(m.dora_scale.shape, generator=gen))
    save_kohya_lora(net, folder / "dora.safetensors", build_metadata(TrainingInfo(output_name="dora"), net),
                    dtype="float")
    deltas = {k: m.delta_weight().detach() for k, m in net.loras()}
    net.remove()
    return folder, deltas


def _pixels(items) -> np.ndarray:
    return np.stack([np.asarray(i.image) for i in items])


def test_dora_tag_strength_zero_is_the_base_image(dora_dir) -> None:
    folder, _ = dora_dir
    bundle = build_tiny_sd1_bundle(seed=0)
    base = _pixels(generate(bundle, FAST))
    one = _pixels(generate(bundle, replace(FAST, prompt="photo of zwx <lora:dora:1>"), lora_dir=folder))
    zero = _pixels(generate(bundle, replace(FAST, prompt="photo of zwx <lora:dora:0>"), lora_dir=folder))
    assert not np.array_equal(one, base)
    assert np.array_equal(zero, base)  # bit for bit: DoRA at strength 0 changes nothing
    assert np.array_equal(_pixels(generate(bundle, FAST)), base)  # hooks removed after the call


def _unet_out(bundle, hidden: torch.Tensor) -> torch.Tensor:
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.unet(x, torch.tensor([400]), hidden).sample


def test_dora_tag_at_half_strength_equals_fused_weights(dora_dir) -> None:
    folder, deltas = dora_dir
    hooked, fused = build_tiny_sd1_bundle(seed=0), build_tiny_sd1_bundle(seed=0)
    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for key, delta in deltas.items():
            component, sub = kohya_to_diffusers_module(key, SD1)
            if component == "unet":
                fused.unet.get_submodule(sub).weight += 0.5 * delta
    session = LoRASet(hooked, folder)
    try:
        session.activate(["photo of zwx <lora:dora:0.5>"])
        got = _unet_out(hooked, hidden)
    finally:
        session.close()
    torch.testing.assert_close(got, _unet_out(fused, hidden), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_unet_out(hooked, hidden), _unet_out(build_tiny_sd1_bundle(seed=0), hidden),
                               rtol=0, atol=0)  # closed session: base model again
