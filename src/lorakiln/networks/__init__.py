"""LoRA networks: adapter maths, injection, key mapping and export.

Public API (see each module for the why):

* `lora` — `LoRAModule`, `delta_weight`, `resolve_alpha`
* `network` — `create_lora_network`, `LoRANetwork`
* name translation (kohya ⇄ diffusers ⇄ PEFT ⇄ LDM/A1111) lives in `lorakiln.models.names`
* `metadata` — `TrainingInfo`, `build_metadata`
* `export` — `save_kohya_lora`, `save_diffusers_lora`, `read_lora_file`

Importing this package imports torch, so the CLI imports it lazily.
"""

from lorakiln.networks.export import read_lora_file, save_diffusers_lora, save_kohya_lora
from lorakiln.networks.lora import LoRAModule, delta_weight, resolve_alpha
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import LoRANetwork, create_lora_network

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
