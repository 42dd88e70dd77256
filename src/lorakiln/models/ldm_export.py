"""Write an SD 1.x (LDM) or SDXL (SGM) single-file checkpoint from diffusers components.

Why: A1111, ComfyUI and model sites exchange base models as one `.safetensors` in the LDM
layout, and lorakiln's own tests need such files without downloading any. The names follow
sd-scripts' `save_stable_diffusion_checkpoint`: `model.diffusion_model.*` (U-Net, diffusers→LDM table — SD 1.x and SDXL use the
same one), `first_stage_model.*` (VAE, LDM `encoder.down.i.block.j` naming, mid-block attention
as 1x1 convs), and per text encoder the family's prefix and layout
(`ModelFamily.te_single_file_prefixes` / `te_single_file_layouts`): the classic HF CLIP layout
`…text_model.*` whatever level the installed transformers uses (≥ 5.6 has none), or OpenCLIP's
for SDXL's second encoder (`open_clip.py`). Loading goes the other way through diffusers' own
`convert_ldm_*` / `convert_open_clip_checkpoint` helpers, so round-trip tests check this module
against diffusers.

The component configs are stored in the `lorakiln.configs` metadata entry: weights cannot say
how many GroupNorm groups or attention heads a model has (see `arch.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lorakiln.atomic import atomic_path
from lorakiln.models.family import SD1, SDXL, ModelFamily
from lorakiln.models.names.ldm import diffusers_to_ldm_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
#: safetensors metadata key holding the component configs as JSON.
CONFIGS_METADATA_KEY = "lorakiln.configs"

# LDM VAE mid-block attention names (`AttnBlock`: norm, q, k, v, proj_out).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_ldm_name(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """The LDM name (without `model.diffusion_model.`) of one diffusers U-Net key.

    The table itself is `ldm_names`, shared with the LoRA key map so U-Net paths are translated
    in one place; it assumes SD's two resnets per level (three LDM blocks per level).
    """
    if layers_per_block != 2:
        raise ValueError(f"LDM export supports SD's layers_per_block=2, not {layers_per_block}")
    levels = frozenset(i for i, has in enumerate(up_has_attention) if has)
    try:
        return diffusers_to_ldm_path(key, levels)
    except KeyError:
        raise ValueError(f"no LDM name for diffusers U-Net key {key!r}") from None


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers U-Net state dict to `model.diffusion_model.*` LDM names."""
    lpb = int(config["layers_per_block"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    return {UNET_PREFIX + unet_ldm_name(k, lpb, up_attn): v for k, v in state_dict.items()}


def vae_ldm_name(key: str, num_up_blocks: int) -> str:
    """The LDM name (without `first_stage_model.`) of one diffusers AutoencoderKL key."""
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    # LDM numbers decoder levels from the lowest resolution up: diffusers up_blocks.0 == up.{n-1}.
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.match(r"(encoder\.conv_(in|out)|decoder\.conv_(in|out)|quant_conv|post_quant_conv)\.", key):
        return key
    raise ValueError(f"no LDM name for diffusers VAE key {key!r}")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers VAE state dict to `first_stage_model.*` LDM names.

    LDM's `AttnBlock` uses 1x1 `Conv2d` for q, k, v and proj_out where diffusers uses `Linear`,
    so those weights gain two trailing unit dimensions ([C, C] → [C, C, 1, 1]).
    """
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = vae_ldm_name(key, n_up)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + name] = value
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prefix a CLIP text state dict with `cond_stage_model.transformer.text_model.` (SD 1.x)."""
    return text_encoder_to_single_file(state_dict, SD1.te_single_file_prefixes[0], "hf_clip")


def text_encoder_to_single_file(
    state_dict: Mapping[str, torch.Tensor], prefix: str, layout: str
) -> dict[str, torch.Tensor]:
    """One text encoder's weights under `prefix`, in the `hf_clip` or `open_clip` layout.

    transformers ≥ 5.6 has no `text_model.` level in `CLIPTextModel`; older
    versions (and `CLIPTextModelWithProjection`) have it. Either way an `hf_clip` file gets the
    classic level, which every client expects.
    """
    if layout == "open_clip":
        from lorakiln.models.names.open_clip import hf_to_open_clip

        return {prefix + k: v for k, v in hf_to_open_clip(state_dict).items()}
    if layout != "hf_clip":
        raise ValueError(f"unknown single-file text-encoder layout {layout!r}")
    out = {}
    for key, value in state_dict.items():
        bare = key.removeprefix("text_model.")
        if bare == "embeddings.position_ids":  # a buffer, not a weight
            continue
        out[f"{prefix}text_model.{bare}"] = value
    return out


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config entries that describe the model (diffusers' `_class_name`, `_use_default_values`... dropped)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _text_config_dict(config: Any) -> dict[str, Any]:
    skip = {"architectures", "transformers_version", "dtype", "torch_dtype"}
    return {k: v for k, v in _public(config.to_dict()).items() if k not in skip}


def components_metadata(
    unet: Any,
    vae: Any,
    text_encoders: Any,
    scheduler: Any | None = None,
    tokenizer_name: str | None = None,
    family: ModelFamily = SD1,
) -> dict[str, str]:
    """The `lorakiln.configs` metadata entry describing the components' non-shape facts.

    `text_encoders` is one model or a list in pipeline order; each is stored under its
    diffusers component name (`text_encoder`, `text_encoder_2`).
    """
    encoders = list(text_encoders) if isinstance(text_encoders, (list, tuple)) else [text_encoders]
    configs: dict[str, Any] = {"unet": _public(unet.config), "vae": _public(vae.config)}
    for name, encoder in zip(family.te_diffusers_prefixes, encoders, strict=True):
        configs[name] = _text_config_dict(encoder.config)
    if scheduler is not None:
        configs["scheduler"] = _public(scheduler.config)
    if tokenizer_name is not None:
        configs["tokenizer"] = tokenizer_name
    return {CONFIGS_METADATA_KEY: json.dumps(configs, default=list, sort_keys=True)}


def single_file_state_dict(
    family: ModelFamily, unet: Any, vae: Any, text_encoders: list[Any]
) -> dict[str, torch.Tensor]:
    """All components' tensors under their single-file names (no copies, no dtype change)."""
    if len(text_encoders) != family.num_text_encoders:
        raise ValueError(f"{family.name} has {family.num_text_encoders} text encoder(s), got {len(text_encoders)}")
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(unet_to_ldm(unet.state_dict(), unet.config))
    tensors.update(vae_to_ldm(vae.state_dict(), vae.config))
    for encoder, prefix, layout in zip(
        text_encoders, family.te_single_file_prefixes, family.te_single_file_layouts, strict=True
    ):
        tensors.update(text_encoder_to_single_file(encoder.state_dict(), prefix, layout))
    return tensors


def save_single_file(
    path: str | Path,
    family: ModelFamily,
    unet: Any,
    vae: Any,
    text_encoders: list[Any],
    *,
    scheduler: Any | None = None,
    dtype: torch.dtype | None = None,
    tokenizer_name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a `family` model as one `.safetensors` in its single-file layout, atomically.

    `dtype` converts floating tensors (e.g. `torch.float16` for a 2 GB SD 1.5 file);
    `tokenizer_name="tiny-sd1"` marks files whose tokenizer is the synthetic tiny one.
    """
    from safetensors.torch import save_file

    tensors = single_file_state_dict(family, unet, vae, list(text_encoders))
    for key, value in tensors.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {"format": "pt",
            **components_metadata(unet, vae, list(text_encoders), scheduler, tokenizer_name, family)}
    meta.update(metadata or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def save_ldm_single_file(
    path: str | Path,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    *,
    scheduler: Any | None = None,
    dtype: torch.dtype | None = None,
    tokenizer_name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write SD 1.x components as one LDM-layout `.safetensors` (see `save_single_file`)."""
    return save_single_file(path, SD1, unet, vae, [text_encoder], scheduler=scheduler, dtype=dtype,
                            tokenizer_name=tokenizer_name, metadata=metadata)


def save_sgm_single_file(
    path: str | Path,
    unet: Any,
    vae: Any,
    text_encoders: list[Any],
    *,
    scheduler: Any | None = None,
    dtype: torch.dtype | None = None,
    tokenizer_name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write SDXL components (CLIP-L, OpenCLIP bigG) as one SGM-layout `.safetensors`.

    OpenCLIP's `logit_scale` (a contrastive-loss scalar, not part of the text encoder) is not
    written; loaders ignore it.
    """
    return save_single_file(path, SDXL, unet, vae, text_encoders, scheduler=scheduler, dtype=dtype,
                            tokenizer_name=tokenizer_name, metadata=metadata)
