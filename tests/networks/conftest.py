"""Fixtures for the LoRA network tests: tiny SD1-shaped models.

Every model is built from config with fixed seeds (no network, no GPU). The helpers and constants
the tests import by name (`DIM`, `ALPHA`, `SGM_FAMILY`, `randomize_up`) live in
`networks_support.py`. The shared `tiny_sd1_dir` / `tiny_sd1_file` fixtures come from
`tests/conftest.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from networks_support import ALPHA, DIM, randomize_up

from lorakiln.models.family import SD1
from lorakiln.models.tiny import TinyComponents, build_tiny_sd1
from lorakiln.networks.network import LoRANetwork, create_lora_network


@pytest.fixture
def tiny_sd1(tmp_path: Path) -> TinyComponents:
    """Fresh tiny SD1 components (hooks mutate modules, so no sharing between tests)."""
    return build_tiny_sd1(tmp_path / "tokenizer", seed=0)


@pytest.fixture
def network(tiny_sd1: TinyComponents) -> LoRANetwork:
    """A LoRA network (dim 8, alpha 4) over the tiny SD1 U-Net and text encoder, random up."""
    net = create_lora_network(tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=DIM, alpha=ALPHA)
    randomize_up(net)
    return net
