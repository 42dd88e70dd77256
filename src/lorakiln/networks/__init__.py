"""LoRA networks: adapter maths, injection, key mapping and export.

Public API (see each module for the why):

* `lora` — `LoRAModule`, `delta_weight`, `resolve_alpha`
* `network` — `create_lora_network`, `LoRANetwork`
* name translation (kohya ⇄ diffusers ⇄ PEFT ⇄ LDM/A1111) lives in `lorakiln.models.names`
* `metadata` — `TrainingInfo`, `build_metadata`
* `export` — `save_kohya_lora`, `save_diffusers_lora`, `read_lora_file`

Importing this package does not import torch; its names load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy (PEP 562): the pure-Python parts (`targets`, `clients`) are read by the config and the dry
# run, which must not pay for importing torch.
_EXPORTS = {
    "read_lora_file": "export", "save_diffusers_lora": "export", "save_kohya_lora": "export",
    "LoRAModule": "lora", "delta_weight": "lora", "resolve_alpha": "lora",
    "TrainingInfo": "metadata", "build_metadata": "metadata",
    "LoRANetwork": "network", "create_lora_network": "network",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lorakiln.networks.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lorakiln.networks' has no attribute {name!r}")


__all__ = [
    "LoRAModule",
    "LoRANetwork",
    "TrainingInfo",
    "build_metadata",
    "create_lora_network",
    "delta_weight",
    "read_lora_file",
    "resolve_alpha",
    "save_diffusers_lora",
    "save_kohya_lora",
]
