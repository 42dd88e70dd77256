"""Euler ancestral on the Karras noise schedule, as AUTOMATIC1111 ≥ 1.9 draws "Euler a" + "Karras".

A1111 runs k-diffusion's `sample_euler_ancestral` on whatever sigmas its schedule type gives, so
"Sampler: Euler a, Schedule type: Karras" is an ordinary infotext there; diffusers'
`EulerAncestralDiscreteScheduler` has no `use_karras_sigmas` option. The ancestral step itself
only reads `sigmas[i]` and `sigmas[i + 1]`, so this subclass keeps diffusers' step and takes the
sigmas and timesteps from diffusers' own Karras discretisation (`EulerDiscreteScheduler` with
`use_karras_sigmas=True`, Karras et al. 2022, eq. 5, ρ = 7) — one implementation of the schedule,
not a second copy.
"""

from __future__ import annotations

import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler


class EulerAncestralKarrasScheduler(EulerAncestralDiscreteScheduler):
    """`EulerAncestralDiscreteScheduler` whose timesteps and sigmas follow the Karras schedule."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        karras = EulerDiscreteScheduler.from_config(self.config, use_karras_sigmas=True)
        karras.set_timesteps(num_inference_steps, device)
        self.timesteps = karras.timesteps
        self.sigmas = karras.sigmas.to("cpu")  # as the parent keeps them: no per-step device sync
