"""Model families as data.

Everything that differs between Stable Diffusion 1.x and SDXL — key prefixes, metadata
strings, LoRA naming style, default resolution — lives in one `ModelFamily` record, so the
rest of the code asks the family instead of branching on `is_sdxl` (ARCHITECTURE.md).
Values come from `../shared/reference/formats.md` §1 (kohya metadata, ModelSpec) and §7
(single-file prefixes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lorakiln.errors import ModelLoadError


@dataclass(frozen=True)
class ModelFamily:
    """Static facts about one Stable Diffusion family."""

    name: str
    #: `ss_base_model_version` written into LoRA metadata (kohya `model_util`).
    base_model_version: str
    #: `ss_v2` metadata value; A1111 reads it to tell SD2 from SD1.
    ss_v2: str
    #: `modelspec.architecture` for a LoRA of this family (kohya `sai_model_spec.py`).
    modelspec_lora_architecture: str
    #: `modelspec.implementation` for a LoRA of this family.
    modelspec_implementation: str
    #: Default square training resolution in pixels.
    default_resolution: int
    #: kohya key prefix per text encoder, in pipeline order.
    te_lora_prefixes: tuple[str, ...]
    #: diffusers/PEFT component name per text encoder, in pipeline order.
    te_diffusers_prefixes: tuple[str, ...]
    #: U-Net LoRA key style: SD1 uses diffusers names, SDXL the SGM/LDM names (formats.md §0).
    unet_key_style: Literal["diffusers", "sgm"]
    #: A key whose presence in a single-file checkpoint identifies the family (diffusers
    #: `CHECKPOINT_KEY_NAMES`).
    single_file_marker: str
    #: Single-file prefix of each text encoder, in pipeline order (formats.md §7).
    te_single_file_prefixes: tuple[str, ...]
    #: diffusers pipeline class used for loading and generation.
    pipeline_class: str
    #: Modules (by class name) whose Linear / 1x1-conv children get LoRA in the U-Net.
    unet_target_blocks: tuple[str, ...] = ("Transformer2DModel",)
    #: Modules (by class name) whose Linear children get LoRA in each text encoder.
    te_target_blocks: tuple[str, ...] = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
    #: U-Net config values that a diffusers folder of this family must have (a missing key
    #: counts as the `UNet2DConditionModel` default). SD 2.x shares SD1's pipeline class and
    #: block layout but uses linear projections; SDXL adds `text_time` embeddings.
    unet_config_match: tuple[tuple[str, object], ...] = ()


SD1 = ModelFamily(
    name="sd1",
    base_model_version="sd_v1",
    ss_v2="False",
    modelspec_lora_architecture="stable-diffusion-v1/lora",
    modelspec_implementation="diffusers",
    default_resolution=512,
    te_lora_prefixes=("lora_te",),
    te_diffusers_prefixes=("text_encoder",),
    unet_key_style="diffusers",
    single_file_marker="model.diffusion_model.output_blocks.11.0.skip_connection.weight",
    te_single_file_prefixes=("cond_stage_model.transformer.",),
    pipeline_class="StableDiffusionPipeline",
    unet_config_match=(("use_linear_projection", False), ("addition_embed_type", None)),
)

FAMILIES: dict[str, ModelFamily] = {SD1.name: SD1}


def get_family(name: str) -> ModelFamily:
    """Return the family called `name`, or raise an error listing the valid names."""
    try:
        return FAMILIES[name]
    except KeyError:
        valid = ", ".join(sorted(FAMILIES))
        raise ModelLoadError(f"unknown model family {name!r}; valid families: {valid}") from None
