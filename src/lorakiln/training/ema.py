"""Exponential moving average of the trained weights (Polyak averaging).

Diffusion models sample noticeably better from an EMA of their weights than from the last
iterate (Ho et al. 2020 used decay 0.9999; Karras et al. 2024 study why); it matters most when
pretraining from scratch, as the toy world's base model is. Saved files hold the EMA weights.
The shadow copy is kept in fp32 beside the live weights and swapped in for saving and sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lorakiln.training import sharding


class EMA:
    """`shadow = decay·shadow + (1 − decay)·param` after every optimizer step.

    A warm-up (`decay_t = min(decay, (1 + t) / (10 + t))`, as diffusers' `EMAModel`) keeps the
    random initial weights from dominating early averages.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.steps = 0
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        self.steps += 1
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Swap the EMA weights into the model for the duration (saving, sampling)."""
        backup = [p.detach().clone() for p in self.params]
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            for b, p in zip(backup, self.params, strict=True):
                p.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Whole tensors: a sharded run's processes must all call this (sharding.whole gathers)."""
        out = {f"ema.{i}": sharding.whole(s) for i, s in enumerate(self.shadow)}
        out["ema.steps"] = torch.tensor(self.steps)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len([k for k in state if k != "ema.steps"]) != len(self.shadow):
            raise ValueError("the saved EMA does not match the trained parameters")
        for i, s in enumerate(self.shadow):
            s.copy_(sharding.slice_like(state[f"ema.{i}"], s))  # a sharded shadow takes its slice
        self.steps = int(state["ema.steps"])
