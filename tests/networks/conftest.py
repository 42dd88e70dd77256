"""Fixtures for the LoRA network tests: tiny SD1-shaped models and helpers.

Every model is built from config with fixed seeds (no network, no GPU).
The shared `tiny_sd1_dir` / `tiny_sd1_file` fixtures come from `tests/conftest.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lorakiln.models.family import SD1, ModelFamily
from lorakiln.models.tiny import TinyComponents, build_tiny_sd1
from lorakiln.networks.network import LoRANetwork, create_lora_network

#: dim ≠ alpha so every numeric check also proves the alpha/dim scale.
DIM, ALPHA = 8, 4.0

#: An SDXL-like family (SGM U-Net names, two text encoders) for key-map tests, until the
#: models package defines the real SDXL family.
SGM_FAMILY: ModelFamily = dataclasses.replace(
    SD1,
    name="sgm_test",
    base_model_version="sdxl_base_v1-0",
    unet_key_style="sgm",
    te_lora_prefixes=("lora_te1", "lora_te2"),
    te_diffusers_prefixes=("text_encoder", "text_encoder_2"),
)


@pytest.fixture
def tiny_sd1(tmp_path: Path) -> TinyComponents:
    """Fresh tiny SD1 components (hooks mutate modules, so no sharing between tests)."""
    return build_tiny_sd1(tmp_path / "tokenizer", seed=0)


def randomize_up(network: LoRANetwork, seed: int = 0) -> None:
    """Give every `lora_up` non-zero weights (fresh LoRAs are exact no-ops: up = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in network.loras():
            w = module.lora_up.weight
            w.copy_(torch.randn(w.shape, generator=gen) * 0.5)


@pytest.fixture
def network(tiny_sd1: TinyComponents) -> LoRANetwork:
    """A LoRA network (dim 8, alpha 4) over the tiny SD1 U-Net and text encoder, random up."""
    net = create_lora_network(tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=DIM, alpha=ALPHA)
    randomize_up(net)
    return net
