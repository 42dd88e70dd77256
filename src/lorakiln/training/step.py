"""One training micro-step: latents + captions → denoising loss (and its backward)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from lorakiln.models.conditioning import condition
from lorakiln.training.noise import diffusion_loss, sample_noise, sample_timesteps, step_generator, target_for

if TYPE_CHECKING:
    from lorakiln.data.loader import Batch
    from lorakiln.training.context import TrainContext


def data_step(ctx: TrainContext, step: int, micro: int) -> int:
    """The data layer's step of micro-batch `micro` of optimizer step `step`: one per micro-batch,
    so caption shuffle/dropout differ between them, and output preservation's user prompts take
    their turn by it (preservation.py)."""
    return step * ctx.cfg.train.gradient_accumulation_steps + micro


def noisy_inputs(ctx: TrainContext, batch: Batch, step: int,
                 micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, target) of one micro-batch. A pure function of (seed, step, micro):
    output preservation (preservation.py) calls it again and gets the very same draws."""
    cfg, scheduler = ctx.cfg, ctx.bundle.noise_scheduler
    latents = batch.latents.to(ctx.device, torch.float32)
    gen = step_generator(cfg.train.seed, step, stream=micro)
    if batch.global_rows is None:
        noise = sample_noise(latents, gen, cfg.train.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, gen, ctx.device)
    else:  # one process's rows of the draws for the whole global batch (distributed.py)
        first, total = batch.global_rows
        rows = slice(first, first + latents.shape[0])
        noise = sample_noise(latents.new_empty((total, *latents.shape[1:])), gen, cfg.train.noise_offset)[rows]
        timesteps = sample_timesteps(total, scheduler.config.num_train_timesteps, gen, ctx.device)[rows]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return noisy, timesteps, target_for(scheduler, latents, noise, timesteps)


def compute_loss(ctx: TrainContext, batch: Batch, step: int, micro: int) -> torch.Tensor:
    """Denoising loss of one batch. Randomness comes only from (seed, step, micro), so a resumed
    run draws the same noise and timesteps as an uninterrupted one."""
    cfg, bundle = ctx.cfg, ctx.bundle
    scheduler = bundle.noise_scheduler
    noisy, timesteps, target = noisy_inputs(ctx, batch, step, micro)

    autocast = (torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)
                if ctx.autocast_dtype is not None else contextlib.nullcontext())
    grad_te = torch.enable_grad() if ctx.text_encoder_needs_grad else torch.no_grad()
    captions = [ctx.prompt(c) for c in batch.captions]
    with autocast:
        with grad_te:
            cond = condition(bundle, batch, captions, cfg.model.clip_skip, ctx.device, ctx.active_text_cache())
        pred = bundle.unet(noisy, timesteps, cond.hidden, added_cond_kwargs=cond.added_cond_kwargs).sample
    return diffusion_loss(pred, target, timesteps, scheduler, cfg.train.min_snr_gamma,
                          is_prior=batch.is_prior if batch.num_prior else None,
                          prior_loss_weight=cfg.prior.prior_loss_weight)
