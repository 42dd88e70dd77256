"""SDXL's second text encoder (OpenCLIP ViT-bigG) between its single-file and HF layouts.

SGM checkpoints store it as OpenCLIP saved it (sd-scripts
`convert_sdxl_text_encoder_2_checkpoint`, diffusers `convert_open_clip_checkpoint`), under
`conditioner.embedders.1.model.`: `transformer.resblocks.N.attn.in_proj_weight` holds q, k and
v stacked in that order along dim 0; `mlp.c_fc`/`c_proj` are `fc1`/`fc2`; `ln_1`/`ln_2`/`ln_final`
are the layer norms; `positional_embedding` is a bare tensor; and `text_projection` is applied
as `x @ P`, so it is the transpose of transformers' `Linear` weight.

Reading goes through diffusers' own `convert_open_clip_checkpoint`; writing is the inverse,
written from the rules above and checked against that converter by a round-trip test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from lorakiln.errors import ModelLoadError

#: HF CLIP names (no `text_model.` level) → OpenCLIP names, for parameters that are renamed only.
_HF_TO_OPEN_CLIP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
#: Per-layer renames inside `encoder.layers.N.` → `transformer.resblocks.N.`.
_LAYER_TO_OPEN_CLIP = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def open_clip_to_hf(sd: Mapping[str, torch.Tensor], prefix: str, what: str) -> dict[str, torch.Tensor]:
    """The OpenCLIP text tower under `prefix` with HF CLIP names (no `text_model.` level).

    `text_projection.weight` is included (transposed), as `CLIPTextModelWithProjection` holds it.
    Other tensors under `prefix` that are not part of the text model (`logit_scale`) are dropped.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    if prefix + "text_projection" not in sd:
        # diffusers would then guess the q/k/v split width from a model config; a file without
        # the projection is not an SDXL base text encoder anyway.
        raise ModelLoadError(f"{what}: `{prefix}text_projection` is missing")
    sub = {k: v for k, v in sd.items() if k.startswith(prefix)}
    converted = convert_open_clip_checkpoint(None, sub, prefix=prefix)
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def hf_to_open_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `CLIPTextModelWithProjection` state dict in OpenCLIP names (no prefix; inverse of above).

    Accepts keys with or without the `text_model.` level. q/k/v weights and biases are stacked
    into `attn.in_proj_weight` / `in_proj_bias`; `text_projection` is transposed.
    """
    flat = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    flat.pop("embeddings.position_ids", None)  # a buffer, not a weight
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        if key in _HF_TO_OPEN_CLIP:
            out[_HF_TO_OPEN_CLIP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            raise ValueError(f"no OpenCLIP name for text-encoder key {key!r}")
        block, module, param = f"transformer.resblocks.{m[1]}", m[2], m[3]
        if module.startswith("self_attn.") and module.removeprefix("self_attn.") in _QKV:
            fused.setdefault((block, param), {})[module.removeprefix("self_attn.")] = value
        elif module in _LAYER_TO_OPEN_CLIP:
            out[f"{block}.{_LAYER_TO_OPEN_CLIP[module]}.{param}"] = value
        else:
            raise ValueError(f"no OpenCLIP name for text-encoder key {key!r}")
    for (block, param), parts in fused.items():
        if set(parts) != set(_QKV):
            raise ValueError(f"{block}: q/k/v {param} incomplete ({sorted(parts)})")
        out[f"{block}.attn.in_proj_{param}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out
