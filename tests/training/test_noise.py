"""Min-SNR weighting: the local SNR equals diffusers' `compute_snr` (imported here only)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr as diffusers_snr

from lorakiln.training.noise import compute_snr, diffusion_loss


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_snr_matches_diffusers(schedule: str) -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    timesteps = torch.tensor([0, 1, 17, 250, 500, 999])
    torch.testing.assert_close(compute_snr(scheduler, timesteps), diffusers_snr(scheduler, timesteps),
                               rtol=1e-5, atol=0)


def test_min_snr_weights_clip_low_noise_steps() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    pred, target = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])  # SNR ≫ 5 at t = 10, ≪ 5 at t = 900
    weighted = diffusion_loss(pred, target, timesteps, scheduler, min_snr_gamma=5.0)
    snr = compute_snr(scheduler, timesteps)
    expected = torch.stack([5.0 / snr[0], torch.tensor(1.0)]).mean()
    torch.testing.assert_close(weighted, expected)
