"""Validation loss: the denoising loss of held-out images at fixed noise and timesteps.

This is SimpleTuner's eval loss. The training loss of one step is a single random timestep on
one batch, so it jumps by more than epochs differ; here every held-out image is noised at the
same `signal_timesteps` timesteps (spread evenly over the schedule) with the same seeded noise at
every saved file, so the number moves only when the weights do, and files can be compared. The
loss is the plain MSE against the model's target (ε or v), without Min-SNR weighting, so it
means the same whatever loss options trained the file.

The held-out images (data/holdout.py) are encoded once, on first use, like the latent cache
(VAE mode, deterministic); the caller (file_signals.py) forks the RNGs and sets eval mode.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lorakiln.data.seeding import derive_seed
from lorakiln.models.conditioning import condition
from lorakiln.training.noise import target_for

if TYPE_CHECKING:
    from lorakiln.data.dataset import ImageItem
    from lorakiln.training.context import TrainContext


def fixed_timesteps(num_train_timesteps: int, count: int) -> list[int]:
    """`count` timesteps at the centres of equal slices of [0, T): 125, 375, 625, 875 for T=1000,
    count=4 — every part of the schedule weighs the same, and no draw is involved."""
    return [int((i + 0.5) * num_train_timesteps / count) for i in range(count)]


def seeded_normal(shape: tuple[int, ...], seed: int, *labels: object) -> torch.Tensor:
    """A standard-normal CPU tensor fixed by (seed, labels), from a private generator: the global
    RNGs, which resume restores, are never drawn from."""
    gen = torch.Generator().manual_seed(derive_seed(seed, *labels) % (2**63 - 1))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def autocast(ctx: TrainContext) -> contextlib.AbstractContextManager[object]:
    """The training step's autocast, so a signal sees the precision the model trains in."""
    if ctx.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)


@dataclass
class _Held:
    """One held-out image, encoded: latent [C, h, w], caption and its SDXL size conditioning."""

    latent: torch.Tensor
    caption: str
    sizes: SimpleNamespace


class ValidationLoss:
    """The held-out images of a run, encoded once, and their loss at any weights."""

    def __init__(self, items: tuple[ImageItem, ...]) -> None:
        self.items = items
        self._held: list[_Held] | None = None

    def __bool__(self) -> bool:
        return bool(self.items)

    def _encode(self, ctx: TrainContext) -> list[_Held]:
        from lorakiln.data.images import load_pixels, plan_crop

        if ctx.encode_fn is None:
            raise RuntimeError("the validation loss needs the VAE encoder (ctx.encode_fn)")
        held = []
        for item in self.items:  # centre crop into the training bucket, no flip: a fixed sample
            bucket = ctx.data.buckets.assign_bucket(item.width, item.height)
            plan = plan_crop(item.width, item.height, bucket)
            latent = ctx.encode_fn(load_pixels(item.path, plan)[None])[0].float()
            sizes = SimpleNamespace(original_sizes=[(item.height, item.width)],
                                    crop_top_lefts=[plan.conditioning_crop_top_left],
                                    target_sizes=[plan.target_size])
            held.append(_Held(latent, item.caption, sizes))
        return held

    @torch.no_grad()
    def measure(self, ctx: TrainContext, num_timesteps: int, seed: int) -> float | None:
        """Mean MSE over held-out images × fixed timesteps with the network as it is now."""
        if not self.items:
            return None
        if self._held is None:
            self._held = self._encode(ctx)
        bundle, scheduler = ctx.bundle, ctx.bundle.noise_scheduler
        steps = torch.tensor(fixed_timesteps(scheduler.config.num_train_timesteps, num_timesteps))
        total, count = 0.0, 0
        for index, held in enumerate(self._held):
            latents = held.latent[None].expand(len(steps), -1, -1, -1).to(ctx.device)
            noise = seeded_normal(tuple(latents.shape), seed, "val-noise", index).to(ctx.device)
            t = steps.to(ctx.device)
            noisy = scheduler.add_noise(latents, noise, t)
            target = target_for(scheduler, latents, noise, t)
            sizes = SimpleNamespace(**{k: v * len(steps) for k, v in vars(held.sizes).items()})
            with autocast(ctx):
                cond = condition(bundle, sizes, [ctx.prompt(held.caption)] * len(steps),
                                 ctx.cfg.model.clip_skip, ctx.device)
                pred = bundle.unet(noisy, t, cond.hidden, added_cond_kwargs=cond.added_cond_kwargs).sample
            total += float(F.mse_loss(pred.float(), target.float(), reduction="sum"))
            count += target.numel()
        return total / count
