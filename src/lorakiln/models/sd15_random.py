"""Full-size SD 1.5 architecture with random weights, for benchmarks without downloads.

Speed and memory depend on the architecture, not on the weight values, so a benchmark can
time a real-size training step (860 M-parameter U-Net, CLIP ViT-L/14 text encoder, 84 M VAE)
on a machine that has no SD 1.5 checkpoint. Built from the bundled configs (`configs/sd15/`)
and tokenized with the bundled CLIP tokenizer, so token ids and sequence lengths are real.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakiln.models.arch import sd15_configs
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.clip_tokenizer import load_sd1_clip_tokenizer
from lorakiln.models.family import SD1


def build_sd15_random(
    dtype: torch.dtype = torch.float32, *, device: str | torch.device = "cpu", seed: int = 0
) -> ModelBundle:
    """SD 1.5-shaped U-Net, VAE and text encoder with seeded random weights, as a `ModelBundle`.

    `device="cuda"` initialises directly on the GPU (seconds instead of ~a minute on CPU);
    `device="meta"` allocates nothing (shape/parameter-count checks).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakiln.models.loading import make_noise_scheduler

    configs = sd15_configs()
    torch.manual_seed(seed)
    with torch.device(device):
        unet: Any = UNet2DConditionModel.from_config(configs.unet)
        vae: Any = AutoencoderKL.from_config(configs.vae)
        text_encoder: Any = CLIPTextModel(CLIPTextConfig.from_dict(configs.text_encoder))
    modules = []
    for module in (unet, vae, text_encoder):
        modules.append(torch.nn.Module.to(module, dtype).eval())  # bypass diffusers' noisy `.to`
    return ModelBundle(
        family=SD1,
        unet=modules[0],
        vae=modules[1],
        text_encoders=[modules[2]],
        tokenizers=[load_sd1_clip_tokenizer()],
        noise_scheduler=make_noise_scheduler(configs.scheduler),
        source="random:sd15",
        name="sd15-random",
        extra={"format": "random", "seed": seed},
    )
