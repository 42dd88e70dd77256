"""Noise, timesteps and loss weighting for epsilon / v-prediction training.

All randomness of a step comes from a `torch.Generator` seeded from (seed, step), so a
resumed run draws exactly the noise and timesteps an uninterrupted run would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads nearby (seed, step) pairs apart


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one step; `stream` separates independent uses within the step."""
    value = (seed * _MIX + step * 1_000_003 + stream * 7919) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def sample_noise(latents: torch.Tensor, gen: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like `latents`; with `noise_offset`, a per-channel constant is added
    (crosslabs "Diffusion with Offset Noise", 2023) so the model can learn very dark or bright
    images."""
    noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32)
    if noise_offset:
        noise += noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)
    return noise.to(latents.device, latents.dtype)


def sample_timesteps(batch: int, num_train_timesteps: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform integer timesteps in [0, T)."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=gen).to(device)


def target_for(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Regression target of the model: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def compute_snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t), the signal-to-noise ratio of DDPM's forward process at each
    timestep (Hang et al. 2023, the min-SNR paper, §3). The same value as diffusers'
    `training_utils.compute_snr`, computed here because importing that module pulls in
    `torch._dynamo` and peft at start-up (seconds) for these few lines."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    alpha = alphas_cumprod[timesteps]
    return alpha / (1.0 - alpha)


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: Any,
    min_snr_gamma: float | None = None,
    is_prior: torch.Tensor | None = None,
    prior_loss_weight: float = 1.0,
) -> torch.Tensor:
    """Mean-squared error, optionally weighted by Min-SNR-γ (Hang et al. 2023, §3.4):
    w(t) = min(SNR(t), γ)/SNR(t) for epsilon, min(SNR, γ)/(SNR+1) for v-prediction.

    With `is_prior` (rows that are class images), the loss is the instance mean plus
    `prior_loss_weight` × the class mean (DreamBooth prior preservation, Ruiz et al. 2023 eq. 2);
    min-SNR weights apply per sample first."""
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        snr = compute_snr(scheduler, timesteps).to(loss.device)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        denom = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
        loss = loss * (clipped / denom)
    if is_prior is not None and bool(is_prior.any()):
        prior = is_prior.to(loss.device)
        return loss[~prior].mean() + prior_loss_weight * loss[prior].mean()
    return loss.mean()
