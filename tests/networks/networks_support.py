"""Helpers the network tests import by name. A module of its own, not `conftest`: with several
`conftest.py` files on the import path, `from conftest import …` gets whichever conftest was
imported first, so a test's imports would depend on which other tests ran before it."""

from __future__ import annotations

import dataclasses

import torch

from lorakiln.models.family import SD1, ModelFamily
from lorakiln.networks.network import LoRANetwork

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


def randomize_up(network: LoRANetwork, seed: int = 0) -> None:
    """Give every `lora_up` non-zero weights (fresh LoRAs are exact no-ops: up = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in network.loras():
            w = module.lora_up.weight
            w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
