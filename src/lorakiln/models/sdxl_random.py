"""Full-size SDXL architecture with random weights, for benchmarks without downloads.

As `sd15_random` for SD 1.5: speed and memory depend on the architecture, not on the weight
values, so a benchmark can time a real-size SDXL step (2.57 B-parameter U-Net, CLIP-L and
OpenCLIP bigG text encoders, 84 M VAE) with no checkpoint. Built from the bundled SDXL base
configs (`configs/sdxl/`) and tokenized with the bundled CLIP BPE (TE2 padding with "!"), so
token ids, sequence lengths and conditioning shapes are real.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakiln.models.arch import sdxl_configs
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.clip_tokenizer import load_clip_tokenizer
from lorakiln.models.family import SDXL


def build_sdxl_random(
    dtype: torch.dtype = torch.float32, *, device: str | torch.device = "cpu", seed: int = 0
) -> ModelBundle:
    """SDXL-base-shaped U-Net, VAE and both text encoders with seeded random weights.

    `device="cuda"` initialises directly on the GPU (the fp32 U-Net alone is 10.3 GB, and CPU
    init takes minutes); `device="meta"` allocates nothing (shape/parameter-count checks).
    """
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lorakiln.models.loading import make_noise_scheduler

    configs = sdxl_configs()
    torch.manual_seed(seed)
    with torch.device(device):
        unet: Any = UNet2DConditionModel.from_config(configs.unet)
        vae: Any = AutoencoderKL.from_config(configs.vae)
        encoders: list[Any] = [
            getattr(transformers, cls)(transformers.CLIPTextConfig.from_dict(cfg))
            for cls, cfg in zip(SDXL.text_encoder_classes, configs.text_encoders, strict=True)
        ]
    # torch.nn.Module.to bypasses diffusers' `.to`, which logs on every dtype cast.
    unet, vae, *encoders = (torch.nn.Module.to(m, dtype).eval() for m in (unet, vae, *encoders))
    return ModelBundle(
        family=SDXL,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=[load_clip_tokenizer(pad_token=pad) for pad in SDXL.tokenizer_pad_tokens],
        noise_scheduler=make_noise_scheduler(configs.scheduler),
        source="random:sdxl",
        name="sdxl-random",
        extra={"format": "random", "seed": seed},
    )
