"""The toy base model's architecture: Stable Diffusion 1.x's block structure at toy widths.

The same structure as SD 1.5 (4 U-Net levels with cross-attention in the first three down and
last three up blocks, 2 resnets per level, a 4-level KL-VAE with 4 latent channels, a CLIP text
encoder with the real CLIP BPE tokenizer), so every module and LoRA key name is a real SD 1.x
one, the single-file export is a normal LDM checkpoint and the model loads through the same
loaders as SD 1.5. Widths are chosen for 64-px images and two CPU cores: 8×8 latents, an 8.6 M
parameter U-Net (≈0.45 s per batch of 64 on 2 cores), a 4-layer, 64-wide text encoder.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakiln.models.tiny import SD1_SCHEDULER_CONFIG

#: Image side the toy model is trained and sampled at.
TOY_RESOLUTION = 64

TOY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": TOY_RESOLUTION,
    "scaling_factor": 1.0,  # set from the trained encoder's latent spread (`vae.py`)
}

TOY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": TOY_RESOLUTION // 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 2,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TOY_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,  # the real CLIP BPE vocabulary (bundled tokenizer)
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 64,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def build_toy_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TOY_VAE_CONFIG)


def build_toy_components(vae: Any, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised U-Net and text encoder around a (trained) VAE, with the CLIP
    tokenizer and SD 1.x's noise schedule: the starting point of pretraining."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakiln.models.clip_tokenizer import load_sd1_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TOY_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TOY_TEXT_CONFIG))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_sd1_clip_tokenizer(),
            "scheduler": DDPMScheduler(**SD1_SCHEDULER_CONFIG)}


def save_toy_init(folder: str, vae: Any, seed: int = 0) -> str:
    """Write the pretraining starting point as a diffusers folder lorakiln's trainer can load."""
    from diffusers import StableDiffusionPipeline

    parts = build_toy_components(vae, seed)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
