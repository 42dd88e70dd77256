"""Validation images while training (diffusers' `validation_prompt`, `num_validation_images`,
`validation_epochs`): rendered with the LoRA being trained, saved under
`<output_dir>/validation/` and logged to TensorBoard.

Rendering must not change training: the network and U-Net go to eval mode (no LoRA dropout,
no checkpointing) and every RNG is forked, so a run with validation ends with the same weights
as one without, and resume stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lorakiln.atomic import atomic_path

if TYPE_CHECKING:
    from PIL.Image import Image

    from lorakiln.training.context import TrainContext


def is_due(ctx: TrainContext, *, epoch_end: bool, final: bool) -> bool:
    """Whether to render now: every `validation_epochs` epochs, every `validation_steps` steps,
    and at the end of training."""
    v, pos = ctx.cfg.validation, ctx.position
    if not v.validation_prompt:
        return False
    if final:
        return True
    if epoch_end:
        return pos.epoch % v.validation_epochs == 0
    return bool(v.validation_steps) and pos.global_step % (v.validation_steps or 1) == 0


def render(ctx: TrainContext) -> list[tuple[str, list[Image]]]:
    """(prompt, images) for every validation prompt, with the current LoRA at strength 1."""
    from lorakiln.inference.pipeline import build_pipeline

    v = ctx.cfg.validation
    width, height = v.validation_resolution or ctx.cfg.data.resolution
    modules = [ctx.network, ctx.bundle.unet, *ctx.bundle.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    pipe = build_pipeline(ctx.bundle)
    out = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for raw_prompt in v.validation_prompt:
                prompt = ctx.prompt(raw_prompt)
                images = []
                for i in range(v.num_validation_images):
                    gen = torch.Generator().manual_seed(v.validation_seed + i)
                    images += pipe(prompt, negative_prompt=ctx.prompt(v.validation_negative_prompt) or None,
                                   num_inference_steps=v.validation_inference_steps,
                                   guidance_scale=v.validation_guidance_scale, width=width, height=height,
                                   generator=gen).images
                out.append((raw_prompt, images))
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return out


def save(ctx: TrainContext, rendered: list[tuple[str, list[Image]]]) -> list[Path]:
    """Write `validation/e0001-s000010-p0-0.png` … atomically; the PNG text holds the prompt."""
    from PIL.PngImagePlugin import PngInfo

    folder = ctx.output_dir / "validation"
    pos = ctx.position
    paths = []
    for p_idx, (prompt, images) in enumerate(rendered):
        for i, image in enumerate(images):
            info = PngInfo()
            info.add_text("parameters", f"{prompt}\nSeed: {ctx.cfg.validation.validation_seed + i}, "
                                        f"Steps: {ctx.cfg.validation.validation_inference_steps}")
            path = folder / f"e{pos.epoch:04d}-s{pos.global_step:06d}-p{p_idx}-{i}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG", pnginfo=info)
            paths.append(path)
    return paths


def as_batch(images: list[Image]) -> np.ndarray:
    """[N, H, W, 3] uint8 for TensorBoard's `add_images(..., dataformats="NHWC")`."""
    return np.stack([np.asarray(im.convert("RGB")) for im in images])
