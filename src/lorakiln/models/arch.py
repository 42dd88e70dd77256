"""Component configs: the bundled SD 1.5 / SDXL sets, config folders, and shape inference.

A single-file checkpoint stores weights but no config. Rather than fetching the reference repo
from the hub (what diffusers' `from_single_file` does by default), lorakiln reads every
*width* from tensor shapes — block channels, layer counts, transformer depths per level,
cross-attention width, text hidden size, vocabulary, projection widths — so real SD 1.5 / SDXL
files and the tiny test models load with no config at all.

What shapes cannot tell (GroupNorm group count, attention head count, activation, VAE
scaling factor, noise schedule) comes from, in order: the file's `lorakiln.configs`
metadata (written by `ldm_export`), else the family's bundled configs in `configs/sd15/` or
`configs/sdxl/` (the values of `stable-diffusion-v1-5` / `stable-diffusion-xl-base-1.0`).
A `config_dir` bypasses inference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lorakiln.errors import ModelLoadError
from lorakiln.models.family import SD1, SDXL, ModelFamily

#: Text-encoder attention heads are 64 wide in every CLIP model (ViT-L/14: 768 / 12; bigG: 1280 / 20).
CLIP_HEAD_WIDTH = 64


@dataclass
class ComponentConfigs:
    """diffusers/transformers config dicts for the components of one SD model."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    #: One `CLIPTextConfig` dict per text encoder, in pipeline order.
    text_encoders: list[dict[str, Any]]
    scheduler: dict[str, Any]
    #: Tokenizer folders that came with the configs (a `config_dir/tokenizer[_2]`), per encoder.
    tokenizer_dirs: list[Path | None] = field(default_factory=list)
    #: Where the configs came from, for messages and `ModelBundle.extra`.
    origin: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def text_encoder(self) -> dict[str, Any]:
        """The first text encoder's config (the only one for SD 1.x)."""
        return self.text_encoders[0]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{what}: {path} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{what}: cannot read {path}: {exc}") from exc


def read_config_dir(folder: str | Path, family: ModelFamily = SD1) -> ComponentConfigs:
    """Read a diffusers-layout config folder for `family`: `unet/config.json`, `vae/config.json`,
    one `config.json` per text-encoder subfolder (`text_encoder`, `text_encoder_2`), optional
    `scheduler/scheduler_config.json` and tokenizer subfolders.

    Any diffusers model folder qualifies, so `config_dir=<a local SDXL download>` works too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"config_dir {folder} is not a folder")
    what = f"config_dir {folder}"
    sched_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(sched_path, what) if sched_path.is_file() else bundled_configs(family).scheduler
    return ComponentConfigs(
        unet=_read_json(folder / "unet" / "config.json", what),
        vae=_read_json(folder / "vae" / "config.json", what),
        text_encoders=[_read_json(folder / sub / "config.json", what) for sub in family.te_diffusers_prefixes],
        scheduler=scheduler,
        tokenizer_dirs=[folder / sub if (folder / sub).is_dir() else None for sub in family.tokenizer_subfolders],
        origin=str(folder),
    )


def bundled_configs(family: ModelFamily) -> ComponentConfigs:
    """The reference configs bundled for `family` (`configs/<family.bundled_configs>/`), fresh dicts."""
    root = resources.files("lorakiln.models").joinpath("configs", family.bundled_configs)

    def load(rel: str) -> dict[str, Any]:
        return json.loads(root.joinpath(rel).read_text(encoding="utf-8"))

    return ComponentConfigs(
        unet=load("unet/config.json"),
        vae=load("vae/config.json"),
        text_encoders=[load(f"{sub}/config.json") for sub in family.te_diffusers_prefixes],
        scheduler=load("scheduler/scheduler_config.json"),
        origin=f"bundled {family.bundled_configs} configs",
    )


def sd15_configs() -> ComponentConfigs:
    """The SD 1.5 configs bundled in `configs/sd15/` (fresh dicts on every call)."""
    return bundled_configs(SD1)


def sdxl_configs() -> ComponentConfigs:
    """The SDXL base 1.0 configs bundled in `configs/sdxl/` (fresh dicts on every call)."""
    return bundled_configs(SDXL)


# --- shape inference ---------------------------------------------------------------------


def _shape(sd: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise ModelLoadError(f"{what}: expected tensor {key!r} is missing") from None


def _indices(sd: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _check_groups(cfg: dict[str, Any], what: str) -> None:
    groups = cfg["norm_num_groups"]
    bad = [c for c in cfg["block_out_channels"] if c % groups]
    if bad:
        raise ModelLoadError(
            f"{what}: channel widths {cfg['block_out_channels']} are not divisible by "
            f"norm_num_groups={groups}; GroupNorm's group count is not stored in the weights, "
            "so pass config_dir=<a diffusers folder with matching configs>"
        )


def infer_unet_config(sd: Mapping[str, Any], base: Mapping[str, Any], what: str = "U-Net") -> dict[str, Any]:
    """UNet2DConditionModel config from an LDM/SGM U-Net state dict (prefix removed).

    Layout rules (sd-scripts `model_util.py`, diffusers `single_file_utils.py`): `input_blocks.0` is `conv_in`; each level has
    `layers_per_block` resnet(+attention) blocks then one `.0.op` downsampler except the last;
    a level has cross-attention when its first block has a `.1.proj_in`; its transformer depth
    is the number of `transformer_blocks` there (SDXL: 2 and 10). SDXL's `label_emb` is the
    `text_time` embedding of pooled text + size/crop ids.
    """
    cfg = dict(base)
    c0, in_ch = _shape(sd, "input_blocks.0.0.weight", what)[:2]
    n_in = len(_indices(sd, r"input_blocks\.(\d+)\."))
    levels = len(_indices(sd, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    per_level, rest = divmod(n_in - 1 - (levels - 1), levels)
    if rest or per_level < 1:
        raise ModelLoadError(f"{what}: {n_in} input blocks do not form {levels} regular levels")
    firsts = [lvl * (per_level + 1) + 1 for lvl in range(levels)]
    widths = [_shape(sd, f"input_blocks.{i}.0.out_layers.3.weight", what)[0] for i in firsts]
    down_attn = [f"input_blocks.{i}.1.proj_in.weight" in sd for i in firsts]
    up_attn = [f"output_blocks.{lvl * (per_level + 1)}.1.proj_in.weight" in sd for lvl in range(levels)]
    cfg.update(
        in_channels=in_ch,
        out_channels=_shape(sd, "out.2.weight", what)[0],
        block_out_channels=widths,
        layers_per_block=per_level,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
    )
    if widths[0] != c0:
        raise ModelLoadError(f"{what}: conv_in width {c0} differs from the first level's {widths[0]}")
    attn_keys = sorted(k for k in sd if k.endswith("transformer_blocks.0.attn2.to_k.weight"))
    if attn_keys:
        cfg["cross_attention_dim"] = _shape(sd, attn_keys[0], what)[1]
        proj_in = next(k for k in sd if k.endswith(".proj_in.weight"))
        cfg["use_linear_projection"] = len(_shape(sd, proj_in, what)) == 2
        cfg["transformer_layers_per_block"] = _transformer_depths(sd, firsts, down_attn, what)
    if "label_emb.0.0.weight" in sd:
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = _shape(sd, "label_emb.0.0.weight", what)[1]
    heads = cfg.get("attention_head_dim")
    if isinstance(heads, (list, tuple)) and len(heads) != levels:
        raise ModelLoadError(
            f"{what}: {levels} levels but {len(heads)} attention head counts in the base config; "
            "head counts are not stored in the weights, so pass config_dir=<a diffusers folder>"
        )
    _check_groups(cfg, what)
    return cfg


def _transformer_depths(sd: Mapping[str, Any], firsts: list[int], down_attn: list[bool], what: str) -> int | list[int]:
    """`transformer_layers_per_block`: one int when every attention level agrees (SD 1.x), else a
    per-level list with 1 for levels without attention (SDXL's `[1, 2, 10]`)."""
    def depth(block: str) -> int:
        return len(_indices(sd, re.escape(block) + r"\.transformer_blocks\.(\d+)\."))

    depths = [depth(f"input_blocks.{i}.1") if a else 1 for i, a in zip(firsts, down_attn, strict=True)]
    attn_depths = {d for d, a in zip(depths, down_attn, strict=True) if a}
    result: int | list[int] = depths if len(attn_depths) > 1 else attn_depths.pop()
    mid = depth("middle_block.1")
    expected = depths[-1] if isinstance(result, list) else result
    if mid and mid != expected:  # diffusers gives the mid block the last level's depth
        raise ModelLoadError(
            f"{what}: the middle block has {mid} transformer blocks but the last level {expected}; "
            "diffusers cannot build that U-Net from an inferred config, pass config_dir=<a diffusers folder>"
        )
    return result


def fit_time_embed_dim(cfg: dict[str, Any], pooled_dim: int, n_time_ids: int, what: str = "U-Net") -> None:
    """Set `addition_time_embed_dim` from `label_emb`'s input width:
    `projection_class_embeddings_input_dim = n_time_ids · addition_time_embed_dim + pooled_dim`
    (SDXL: 6 · 256 + 1280 = 2816)."""
    total = int(cfg["projection_class_embeddings_input_dim"])
    per_id, rest = divmod(total - pooled_dim, n_time_ids)
    if rest or per_id <= 0:
        raise ModelLoadError(
            f"{what}: the added-condition embedding takes {total} inputs, which is not {n_time_ids} "
            f"time ids plus the {pooled_dim}-wide pooled text embedding"
        )
    cfg["addition_time_embed_dim"] = per_id


def infer_vae_config(sd: Mapping[str, Any], base: Mapping[str, Any], what: str = "VAE") -> dict[str, Any]:
    """AutoencoderKL config from an LDM VAE state dict (`first_stage_model.` removed).

    LDM names the encoder levels `encoder.down.{i}.block.{j}` (j < layers_per_block) and the
    decoder levels in reverse, `decoder.up.{i}` with one extra resnet each.
    """
    cfg = dict(base)
    levels = len(_indices(sd, r"encoder\.down\.(\d+)\."))
    if levels == 0:
        raise ModelLoadError(f"{what}: no `encoder.down.*` tensors (not an LDM-layout VAE)")
    cfg.update(
        in_channels=_shape(sd, "encoder.conv_in.weight", what)[1],
        out_channels=_shape(sd, "decoder.conv_out.weight", what)[0],
        latent_channels=_shape(sd, "post_quant_conv.weight", what)[0],
        layers_per_block=len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.")),
        block_out_channels=[_shape(sd, f"encoder.down.{i}.block.0.conv2.weight", what)[0] for i in range(levels)],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    _check_groups(cfg, what)
    return cfg


def infer_text_config(
    sd: Mapping[str, Any], base: Mapping[str, Any], hints: Mapping[str, Any], what: str = "text encoder"
) -> dict[str, Any]:
    """CLIPTextConfig kwargs from a HF-layout CLIP text state dict (no `text_model.` level; a
    `text_projection.weight` sets `projection_dim`).

    The head count is not in the weights: it comes from `hints`, else CLIP's 64-wide heads.
    """
    cfg = {**base, **hints}
    vocab, hidden = _shape(sd, "embeddings.token_embedding.weight", what)
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_shape(sd, "embeddings.position_embedding.weight", what)[0],
        num_hidden_layers=len(_indices(sd, r"encoder\.layers\.(\d+)\.")),
        intermediate_size=_shape(sd, "encoder.layers.0.mlp.fc1.weight", what)[0],
    )
    if "text_projection.weight" in sd:  # CLIPTextModelWithProjection (SDXL's second encoder)
        cfg["projection_dim"] = _shape(sd, "text_projection.weight", what)[0]
    if "num_attention_heads" not in hints:
        if hidden % CLIP_HEAD_WIDTH:
            raise ModelLoadError(
                f"{what}: hidden size {hidden} is not a multiple of CLIP's 64-wide heads and the "
                "head count is not stored in the weights; pass config_dir=<a diffusers folder>"
            )
        cfg["num_attention_heads"] = hidden // CLIP_HEAD_WIDTH
    return cfg
