"""Tiny SDXL-shaped models built from config with fixed seeds (tests, `tiny:sdxl`).

SDXL's structure at tiny widths (names depend on block structure, not width), so every module name — and therefore
every LoRA key — is the real one while a training step takes a fraction of a second:

* U-Net: 3 levels, `DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D` (up mirrored),
  SDXL's transformer depths `[1, 2, 10]` (so 722 LoRA target modules, as the real model),
  linear projections, and `text_time` added conditioning whose input width is
  `6 · addition_time_embed_dim + pooled width`. Widths strictly increase per level, as the real
  320/640/1280, so resnet `conv_shortcut`s sit where SDXL's do.
* Text encoders: a 12-layer `CLIPTextModel` (CLIP-L's layer count) and a 32-layer
  `CLIPTextModelWithProjection` (bigG's), so `lora_te2_…layers_31…` exists. Different widths
  (32 / 64) and a projection (48) narrower than the hidden size make a swapped encoder or an
  untransposed `text_projection` fail loudly instead of passing by symmetry.
* VAE: SD's 4-level layout; widths `[8, 16, 32, 32]` repeat SDXL's pattern of where
  `nin_shortcut`s appear. SDXL's scaling factor 0.13025.
* Tokenizers: the synthetic tiny CLIP BPE for both; `tokenizer_2` pads with "!" like SDXL's.
  The encoders keep the real configs' legacy `eos_token_id = 2`, hence the real pooling rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakiln.models.family import SDXL
from lorakiln.models.tiny import TINY_TEXT_CONFIG, TINY_TOKENIZER_NAME, tiny_tokenizer, write_tiny_tokenizer

#: Width of the pooled, projected TE2 output (`text_embeds`); SDXL: 1280.
TINY_SDXL_POOLED_DIM = 48
#: Per-number width of the size/crop `time_ids` embedding; SDXL: 256.
TINY_SDXL_TIME_EMBED_DIM = 8

TINY_SDXL_TEXT_CONFIG: dict[str, Any] = dict(TINY_TEXT_CONFIG)  # CLIP-L's shape, tiny widths

TINY_SDXL_TEXT2_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 32,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": TINY_SDXL_POOLED_DIM,
}

TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    # diffusers' `attention_head_dim` is the head *count* per level (SDXL: 5, 10, 20 = width / 64);
    # here width / 16.
    "attention_head_dim": [1, 2, 4],
    # The U-Net attends to both encoders' hidden states concatenated (SDXL: 768 + 1280 = 2048).
    "cross_attention_dim": TINY_SDXL_TEXT_CONFIG["hidden_size"] + TINY_SDXL_TEXT2_CONFIG["hidden_size"],
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TINY_SDXL_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": SDXL.num_time_ids * TINY_SDXL_TIME_EMBED_DIM + TINY_SDXL_POOLED_DIM,
}

TINY_SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}


@dataclass
class TinySDXLComponents:
    """The parts of a tiny SDXL pipeline, before they are saved anywhere."""

    unet: Any
    vae: Any
    #: `[CLIPTextModel, CLIPTextModelWithProjection]`.
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler: Any


def _tokenizers(folder: Path | None) -> list[Any]:
    """Both tiny tokenizers; with `folder`, written as `tokenizer/` and `tokenizer_2/` and read back."""
    from transformers import CLIPTokenizer

    toks = []
    for sub, pad in zip(SDXL.tokenizer_subfolders, SDXL.tokenizer_pad_tokens, strict=True):
        if folder is None:
            toks.append(tiny_tokenizer(pad_token=pad))
        else:
            write_tiny_tokenizer(folder / sub)
            toks.append(CLIPTokenizer.from_pretrained(str(folder / sub), model_max_length=77, pad_token=pad))
    return toks


def build_tiny_sdxl(folder: str | Path | None = None, seed: int = 0) -> TinySDXLComponents:
    """Build a tiny SDXL pipeline's components with fixed seeds.

    `folder` receives the tokenizer files (`tokenizer/`, `tokenizer_2/`); `None` builds the same
    tokenizers in memory, e.g. for the `tiny:sdxl` base model.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakiln.models.arch import sdxl_configs

    tokenizers = _tokenizers(Path(folder) if folder is not None else None)
    reference = sdxl_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_SDXL_VAE_CONFIG)
    encoders = []
    for offset, (cls, cfg, tok, ref) in enumerate(
        [(CLIPTextModel, TINY_SDXL_TEXT_CONFIG, tokenizers[0], reference.text_encoders[0]),
         (CLIPTextModelWithProjection, TINY_SDXL_TEXT2_CONFIG, tokenizers[1], reference.text_encoders[1])]
    ):
        torch.manual_seed(seed + 2 + offset)
        # The real configs' legacy token ids (bos 0, eos 2, pad 1): with `eos_token_id == 2`
        # transformers pools at the highest input id — the EOS token in both vocabularies —
        # exactly as for SDXL base, so pooled-output quirks (new pivotal tokens) reproduce here.
        ids = {k: ref[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        encoders.append(cls(CLIPTextConfig(**cfg, vocab_size=len(tok), **ids)))
    scheduler = EulerDiscreteScheduler.from_config(
        {k: v for k, v in reference.scheduler.items() if not k.startswith("_")}
    )
    for module in (unet, vae, *encoders):
        module.eval()
    return TinySDXLComponents(unet, vae, encoders, tokenizers, scheduler)


def save_tiny_sdxl_diffusers(folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny SDXL model and save it as a diffusers folder (`StableDiffusionXLPipeline` layout)."""
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    parts = build_tiny_sdxl(folder, seed=seed)
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoders[0],
        text_encoder_2=parts.text_encoders[1],
        tokenizer=parts.tokenizers[0],
        tokenizer_2=parts.tokenizers[1],
        unet=parts.unet,
        scheduler=parts.scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_sdxl_single_file(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny SDXL model and write it as one SGM-layout `.safetensors`.

    Same weights as `save_tiny_sdxl_diffusers(folder, seed)`; the metadata carries the configs
    and names the tiny tokenizer, so `load_base_model(path)` needs no config folder.
    """
    from lorakiln.models.ldm_export import save_sgm_single_file

    parts = build_tiny_sdxl(None, seed=seed)
    return save_sgm_single_file(path, parts.unet, parts.vae, parts.text_encoders, scheduler=parts.scheduler,
                                tokenizer_name=TINY_TOKENIZER_NAME)


def build_tiny_sdxl_bundle(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The tiny SDXL model as a `ModelBundle`, built in memory (the `tiny:sdxl` base model)."""
    from lorakiln.models.bundle import ModelBundle
    from lorakiln.models.loading import make_noise_scheduler
    from lorakiln.models.single_file import cast_module

    parts = build_tiny_sdxl(None, seed=seed)
    return ModelBundle(
        family=SDXL,
        unet=cast_module(parts.unet, dtype),
        vae=cast_module(parts.vae, dtype),
        text_encoders=[cast_module(te, dtype) for te in parts.text_encoders],
        tokenizers=parts.tokenizers,
        noise_scheduler=make_noise_scheduler(dict(parts.scheduler.config)),
        source=f"tiny:sdxl:{seed}" if seed else "tiny:sdxl",
        name="tiny-sdxl",
        extra={"format": "tiny", "seed": seed},
    )
