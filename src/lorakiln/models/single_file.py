"""Build SD 1.x / SDXL components from a single-file checkpoint (LDM / SGM layout), offline.

Name conversion is diffusers' own (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint` in
`diffusers.loaders.single_file_utils`); what lorakiln adds is the config —
inferred from tensor shapes (`arch.py`) instead of fetched from the hub — and strict loading:
every weight the model expects must be in the file with the right shape, or the error says
which are not. Which text-encoder layout a file uses is family data
(`ModelFamily.te_single_file_layouts`), so nothing here branches on SD 1.x vs SDXL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from lorakiln.errors import ModelLoadError
from lorakiln.models.arch import (
    ComponentConfigs,
    bundled_configs,
    fit_time_embed_dim,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    read_config_dir,
)
from lorakiln.models.family import SD1, ModelFamily
from lorakiln.models.ldm_export import CONFIGS_METADATA_KEY, UNET_PREFIX

#: Formats that are Python pickles: loading one can execute arbitrary code.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: LDM prefixes a VAE may carry (a full checkpoint, or some standalone VAE files).
VAE_PREFIXES = ("first_stage_model.", "vae.")


def pickle_refusal(path: Path) -> ModelLoadError:
    """The error for a pickle file loaded without `allow_pickle` (names the file and the opt-in)."""
    return ModelLoadError(
        f"{path} is a pickle checkpoint ({path.suffix}); unpickling runs any Python code stored in "
        "the file, so lorakiln does not load it by default. Prefer a .safetensors version of the "
        "model; if you trust this file's source, set `model.allow_pickle = true` in the config "
        "(or pass allow_pickle=True to load_base_model)."
    )


def read_checkpoint(path: Path, *, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return `(state_dict, metadata)` of a `.safetensors` file, or of a pickle when allowed."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        # the shared structure check: a truncated download or a renamed pickle gets the one
        # message that names the file and the broken rule, not the library's own text
        from lorakiln.safetensors_check import load_checked

        return load_checked(path)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise pickle_refusal(path)
        try:
            obj: Any = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path} as a torch pickle: {exc}") from exc
        while isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoints nest it
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    raise ModelLoadError(
        f"{path}: unknown checkpoint format {suffix!r}; expected .safetensors "
        f"(or {', '.join(PICKLE_SUFFIXES)} with allow_pickle)"
    )


def file_hints(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The component configs a lorakiln-exported file carries in its metadata ({} if none)."""
    raw = metadata.get(CONFIGS_METADATA_KEY)
    if not raw:
        return {}
    try:
        hints = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return hints if isinstance(hints, dict) else {}


def strip_prefix(sd: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Keys under the first of `prefixes` present in `sd`, with it removed ({} if none)."""
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def text_state_dicts(sd: Mapping[str, Any], family: ModelFamily = SD1, source: str = "checkpoint") -> list[dict[str, Any]]:
    """Each text encoder's weights with HF CLIP names and no `text_model.` level.

    `hf_clip` layout: the family prefix is stripped by diffusers' `convert_ldm_clip_checkpoint`
    (old SD 1.x files lack the `text_model.` level; both forms work). `open_clip` layout: see
    `open_clip.py`.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    from lorakiln.models.names.open_clip import open_clip_to_hf

    out = []
    for index, (prefix, layout) in enumerate(
        zip(family.te_single_file_prefixes, family.te_single_file_layouts, strict=True)
    ):
        what = f"{family.te_diffusers_prefixes[index]} of {source}"
        if layout == "open_clip":
            converted = open_clip_to_hf(sd, prefix, what)
        else:
            sub = {k: v for k, v in sd.items() if k.startswith(prefix)}
            converted = {k.removeprefix("text_model."): v
                         for k, v in convert_ldm_clip_checkpoint(sub, remove_prefix=prefix).items()}
            converted.pop("embeddings.position_ids", None)  # a buffer in old checkpoints, not a weight
        if not converted:
            raise ModelLoadError(f"{what}: no tensors under `{prefix}`")
        out.append(converted)
    return out


def file_configs(
    sd: Mapping[str, Any],
    metadata: Mapping[str, str],
    config_dir: str | Path | None,
    source: str,
    family: ModelFamily = SD1,
    text_sds: list[dict[str, Any]] | None = None,
) -> ComponentConfigs:
    """Configs for a single file: `config_dir` if given, else inferred from shapes (see `arch.py`).

    `text_sds` are the converted text-encoder weights (`text_state_dicts`), passed in so a 7 GB
    SDXL file's fused q/k/v are split only once.
    """
    if config_dir is not None:
        return read_config_dir(config_dir, family)
    hints = file_hints(metadata)
    base = bundled_configs(family)
    unet = infer_unet_config(strip_prefix(sd, (UNET_PREFIX,)), {**base.unet, **hints.get("unet", {})},
                             f"U-Net of {source}")
    # The bundled SD 1.5 config says it was written by diffusers 0.6.0; with a small sample_size
    # (the toy model) StableDiffusionPipeline then warns that the checkpoint is pre-0.9 and
    # rewrites sample_size to 64. This config is inferred here, not read from an old file.
    unet.pop("_diffusers_version", None)
    vae = infer_vae_config(strip_prefix(sd, VAE_PREFIXES), {**base.vae, **hints.get("vae", {})}, f"VAE of {source}")
    text_sds = text_sds if text_sds is not None else text_state_dicts(sd, family, source)
    text_configs = [
        infer_text_config(te_sd, base_cfg, hints.get(name, {}), f"{name} of {source}")
        for te_sd, base_cfg, name in zip(text_sds, base.text_encoders, family.te_diffusers_prefixes, strict=True)
    ]
    if family.uses_time_ids and family.pooled_text_encoder_index is not None:
        pooled = text_configs[family.pooled_text_encoder_index]["projection_dim"]
        fit_time_embed_dim(unet, int(pooled), n_time_ids=family.num_time_ids, what=f"U-Net of {source}")
    return ComponentConfigs(
        unet=unet,
        vae=vae,
        text_encoders=text_configs,
        scheduler={**base.scheduler, **hints.get("scheduler", {})},
        origin="inferred from tensor shapes"
        + (" and lorakiln metadata" if hints else f" ({family.bundled_configs} defaults)"),
    )


def _sample(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{len(keys)} {label}: {', '.join(keys[:3])}{more}"


def empty_model(factory: Callable[[], torch.nn.Module]) -> Any:
    """`factory()` with parameters on the meta device: no memory, no random init (fast for SD 1.5)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, what: str) -> Any:
    """Load `state_dict` into an `empty_model` strictly, cast to `dtype`, and set eval mode.

    Strict on purpose: a silently half-loaded model trains garbage (diffusers: loud errors).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = [_sample(lbl, ks) for lbl, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
        raise ModelLoadError(
            f"{what}: the weights do not fit a {type(model).__name__} ({'; '.join(parts)}); "
            "if this model's architecture differs from the reference one, pass config_dir=<diffusers folder>"
        )
    bad = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state_dict.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ModelLoadError(f"{what}: tensor shapes do not match the config: {_sample('mismatched', bad)}")
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return cast_module(model, dtype).eval()


def cast_module(model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """Cast floating parameters/buffers to `dtype`, skipping the no-op case.

    Uses `torch.nn.Module.to` directly: diffusers' `ModelMixin.to` logs a "kept in float32"
    warning on every dtype cast, even when no module is meant to stay in float32.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return model
    return torch.nn.Module.to(model, dtype)


def unet_from_ldm(sd: Mapping[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype, what: str) -> Any:
    """UNet2DConditionModel from a checkpoint's `model.diffusion_model.*` tensors."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    converted = convert_ldm_unet_checkpoint(dict(sd), config)
    return load_strict(empty_model(lambda: UNet2DConditionModel.from_config(config)), converted, dtype, what)


def vae_from_ldm(sd: Mapping[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype, what: str) -> Any:
    """AutoencoderKL from LDM VAE tensors (`first_stage_model.*`, or unprefixed in a VAE file)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint(dict(sd), config)
    return load_strict(empty_model(lambda: AutoencoderKL.from_config(config)), converted, dtype, what)


def text_encoder_from_state(
    state_dict: Mapping[str, torch.Tensor], config: dict[str, Any], class_name: str, dtype: torch.dtype, what: str
) -> Any:
    """A transformers CLIP text model (`class_name`) from HF-named weights without `text_model.`.

    The `text_model.` level is then matched to the installed transformers, as diffusers does:
    `CLIPTextModel` lost it in ≥ 5.6, `CLIPTextModelWithProjection` keeps it;
    `text_projection` sits outside it either way.
    """
    import transformers

    text_config = transformers.CLIPTextConfig.from_dict(config)
    model = empty_model(lambda: getattr(transformers, class_name)(text_config))
    weights = dict(state_dict)
    if hasattr(model, "text_model"):
        weights = {k if k.startswith("text_projection.") else f"text_model.{k}": v for k, v in weights.items()}
    return load_strict(model, weights, dtype, what)
