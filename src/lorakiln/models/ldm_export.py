"""Write an SD 1.x single-file checkpoint (original LDM layout) from diffusers components.

Why: A1111, ComfyUI and model sites exchange base models as one `.safetensors` in the LDM
layout, and lorakiln's own tests need such files without downloading any. The names follow
formats.md §7: `model.diffusion_model.*` (U-Net, diffusers→LDM table), `first_stage_model.*`
(VAE, LDM `encoder.down.i.block.j` naming, mid-block attention as 1x1 convs), and
`cond_stage_model.transformer.text_model.*` (the classic HF CLIP layout, whatever level the
installed transformers uses, formats.md §8). Loading goes the other way through diffusers'
own `convert_ldm_*` helpers, so a round-trip test checks this module against diffusers.

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

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
#: safetensors metadata key holding the component configs as JSON.
CONFIGS_METADATA_KEY = "lorakiln.configs"

# LDM VAE mid-block attention names (`AttnBlock`: norm, q, k, v, proj_out).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_ldm_name(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """The LDM name (without `model.diffusion_model.`) of one diffusers U-Net key (formats.md §7).

    The table itself lives in `lorakiln.networks.keymap`, the one place names are translated;
    it assumes SD's two resnets per level (three LDM blocks per level).
    """
    from lorakiln.networks.keymap import diffusers_to_ldm_path

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
    """Prefix a CLIP text state dict with `cond_stage_model.transformer.text_model.`.

    transformers ≥ 5.6 has no `text_model.` level in `CLIPTextModel` (formats.md §8); older
    versions have it. Either way the file gets the classic level, which every client expects.
    """
    out = {}
    for key, value in state_dict.items():
        bare = key.removeprefix("text_model.")
        if bare == "embeddings.position_ids":  # a buffer, not a weight
            continue
        out[TEXT_PREFIX + bare] = value
    return out


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config entries that describe the model (diffusers' `_class_name`, `_use_default_values`... dropped)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _text_config_dict(config: Any) -> dict[str, Any]:
    skip = {"architectures", "transformers_version", "dtype", "torch_dtype"}
    return {k: v for k, v in _public(config.to_dict()).items() if k not in skip}


def components_metadata(
    unet: Any, vae: Any, text_encoder: Any, scheduler: Any | None = None, tokenizer_name: str | None = None
) -> dict[str, str]:
    """The `lorakiln.configs` metadata entry describing the components' non-shape facts."""
    configs: dict[str, Any] = {
        "unet": _public(unet.config),
        "vae": _public(vae.config),
        "text_encoder": _text_config_dict(text_encoder.config),
    }
    if scheduler is not None:
        configs["scheduler"] = _public(scheduler.config)
    if tokenizer_name is not None:
        configs["tokenizer"] = tokenizer_name
    return {CONFIGS_METADATA_KEY: json.dumps(configs, default=list, sort_keys=True)}


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
    """Write the three components as one LDM-layout `.safetensors`, atomically.

    `dtype` converts floating tensors (e.g. `torch.float16` for a 2 GB SD 1.5 file);
    `tokenizer_name="tiny-sd1"` marks files whose tokenizer is the synthetic tiny one.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tensors.update(unet_to_ldm(unet.state_dict(), unet.config))
    tensors.update(vae_to_ldm(vae.state_dict(), vae.config))
    tensors.update(text_encoder_to_ldm(text_encoder.state_dict()))
    for key, value in tensors.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {"format": "pt", **components_metadata(unet, vae, text_encoder, scheduler, tokenizer_name)}
    meta.update(metadata or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path
