"""Which `ModelFamily` a checkpoint belongs to, decided from data, not from file names.

Single files are sniffed by key: a family matches when its `single_file_marker` (diffusers'
`CHECKPOINT_KEY_NAMES` in `single_file_utils.py`) and a key under each of its text-encoder prefixes are
present. The text-encoder check matters: SD 2.x has the same U-Net marker as SD 1.x but an
OpenCLIP encoder under `cond_stage_model.model.`; SDXL's marker sits in its second encoder
(`conditioner.embedders.1.model.`), which the refiner lacks. Diffusers folders are matched by
pipeline class plus `ModelFamily.unet_config_match`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from lorakiln.errors import ModelLoadError
from lorakiln.models.family import FAMILIES, ModelFamily

#: Keys of model types lorakiln does not train (yet), so the error can say what the file is
#: instead of "unknown". From diffusers `CHECKPOINT_KEY_NAMES`.
KNOWN_OTHER_MARKERS: dict[str, str] = {
    "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": "the SDXL refiner",
    "cond_stage_model.model.ln_final.bias": "Stable Diffusion 2.x (OpenCLIP text encoder)",
    "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": "Stable Diffusion 3",
    "double_blocks.0.img_attn.norm.key_norm.scale": "FLUX",
}


def _has_prefix(keys: Iterable[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_family(keys: Iterable[str], *, source: str = "checkpoint") -> ModelFamily:
    """Return the family of a single-file checkpoint from its state-dict keys.

    Raises `ModelLoadError` naming `source` when no family matches, saying what the file
    looks like when it is a known other model type (SDXL, SD 2.x, a bare U-Net or VAE...).
    """
    key_set = keys if isinstance(keys, (set, frozenset, Mapping)) else set(keys)
    for family in FAMILIES.values():
        if family.single_file_marker in key_set and all(
            _has_prefix(key_set, p) for p in family.te_single_file_prefixes
        ):
            return family
    raise ModelLoadError(f"{source} is not a Stable Diffusion 1.x or SDXL checkpoint: {_describe(key_set)}")


def _describe(keys: Any) -> str:
    """A short, user-facing guess at what a non-matching state dict is."""
    for marker, what in KNOWN_OTHER_MARKERS.items():
        if marker in keys:
            return f"it looks like {what}."
    if _has_prefix(keys, "model.diffusion_model."):
        return (
            "it has a U-Net (`model.diffusion_model.*`) but not the text encoders of SD 1.x "
            "(`cond_stage_model.transformer.*`) or SDXL (`conditioner.embedders.0.transformer.*` and "
            "`conditioner.embedders.1.model.*`)."
        )
    if _has_prefix(keys, "encoder.down.") or _has_prefix(keys, "encoder.down_blocks."):
        return "it looks like a VAE alone; pass it as `vae=` next to a full base model."
    if any("lora_" in k or "hada_" in k or "lokr_" in k for k in keys):
        return "it looks like a LoRA/LyCORIS network, not a base model."
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return (
        "none of the expected keys (`model.diffusion_model.*`, `first_stage_model.*`, "
        f"`cond_stage_model.transformer.*`, `conditioner.embedders.*`) were found (first keys: {sample})."
    )


def _unet_default(name: str) -> Any:
    """`UNet2DConditionModel.__init__` default for `name` (what a missing config key means)."""
    from diffusers import UNet2DConditionModel

    param = inspect.signature(UNet2DConditionModel.__init__).parameters.get(name)
    return None if param is None else param.default


def detect_family_from_config(
    unet_config: Mapping[str, Any], *, pipeline_class: str | None = None, source: str = "folder"
) -> ModelFamily:
    """Return the family of a diffusers folder from `model_index.json`'s class and the U-Net config."""
    for family in FAMILIES.values():
        if pipeline_class is not None and pipeline_class != family.pipeline_class:
            continue
        if all(unet_config.get(k, _unet_default(k)) == v for k, v in family.unet_config_match):
            return family
    why = f"pipeline class {pipeline_class!r}" if pipeline_class else "its U-Net config"
    if pipeline_class and "XLImg2Img" in pipeline_class:
        why += " (the SDXL refiner, which lorakiln does not train)"
    elif unet_config.get("use_linear_projection") and unet_config.get("addition_embed_type") is None:
        why += " (linear projections: Stable Diffusion 2.x)"
    raise ModelLoadError(f"{source} is not a Stable Diffusion 1.x or SDXL model: {why} matches no known family.")
