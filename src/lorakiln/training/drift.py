"""Drift score: how much the LoRA changes the model's prediction where it should change nothing.

ai-toolkit's differential output preservation (adopted by sd-scripts) trains on the difference
between the network-on and network-off predictions for the class prompt — the trigger word
replaced by the class word — and its blank prompt preservation does the same for "". The same
difference, measured instead of trained on, says how far a saved file bleeds into its class and
into unconditioned generation, with no detector model:

    drift(s) = Σ ‖ε_lora(s) − ε_base‖² / Σ ‖ε_base‖²

over the preservation prompts (class prompts, "", `drift_prompts`) × `signal_timesteps` fixed
timesteps, on seeded random latents at the training resolution with seeded noise, at LoRA
strength s. It is 0 for a LoRA that changes nothing and grows with the strength (about as s²
while the change is small). "ε" is the model's output, whatever its prediction type.

The base prediction is the model with the LoRA hooks removed (`LoRANetwork.remove`), not
strength 0, so DoRA and other adapters whose strength-0 output is not the base are measured
right. Full fine-tuning has no base to compare with and gets no drift score.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from lorakiln.models.conditioning import condition
from lorakiln.training.val_loss import autocast, fixed_timesteps, seeded_normal

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext

#: The strengths of the kohya_ss walkthrough's epochs × strengths grid (inference/grid.py).
GRID_STRENGTHS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def class_prompts(ctx: TrainContext) -> list[str]:
    """One caption per kohya folder with a class word, its trigger replaced by that word (ai-toolkit
    DOP's class prompt); a pivotal run's token abstraction counts as the trigger too, so the class
    prompt uses no new tokens."""
    prompts: list[str] = []
    pivot = ctx.cfg.pivotal.token_abstraction if ctx.pivotal is not None else None
    # `[preservation]` (output preservation, when that section exists) may name the class and triggers.
    pres = getattr(ctx.cfg, "preservation", None)
    word = getattr(pres, "preservation_class", None)
    named = [t.strip() for t in (getattr(pres, "preservation_trigger", None) or "").split(",")]
    for subset in ctx.dataset.subsets:
        cls = word or subset.class_token
        if not cls or not subset.items:
            continue
        text = subset.items[0].caption
        for trigger in sorted({subset.token, pivot, *named} - {None, ""}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(str(trigger))}(?!\w)", cls, text)
        if text not in prompts:
            prompts.append(text)
    return prompts


#: Said once when every drift prompt is one that output preservation trains toward the base.
TRAINED_PROMPTS_NOTE = ("drift is measured on prompts that output preservation trains to stay at the base "
                        "model (the class and blank prompts), so it reads low; add [validation] "
                        "drift_prompts (other subjects the LoRA should leave alone) for an honest score")


def drift_prompt_plan(ctx: TrainContext) -> tuple[list[str], str | None]:
    """(prompts, note): the class prompts, the blank prompt and the user's `drift_prompts`, each
    once, without the ones output preservation trains toward the base — DOP holds the class
    prompts and blank-prompt preservation the blank one at the base model's prediction, so on them
    the score reads low whatever the LoRA does elsewhere (measured on the toy world: a DOP run
    scoring 0.0017 kept 73 % of the base model's right pictures, runs without DOP at that score
    about 90 %; docs/toyworld.md). If nothing else is left they are used anyway, with a note."""
    classes = class_prompts(ctx)
    every: list[str] = []
    for p in [*classes, "", *ctx.cfg.validation.drift_prompts]:
        if p not in every:
            every.append(p)
    pres = getattr(ctx.cfg, "preservation", None)
    trained = set(classes) if getattr(pres, "diff_output_preservation", False) else set()
    if getattr(pres, "blank_prompt_preservation", False):
        trained.add("")
    honest = [p for p in every if p not in trained or p in ctx.cfg.validation.drift_prompts]
    return (honest, None) if honest else (every, TRAINED_PROMPTS_NOTE)



class DriftProbe:
    """Fixed inputs of the drift score for one run, and the score at any strengths."""

    def __init__(self, ctx: TrainContext) -> None:
        v, unet = ctx.cfg.validation, ctx.bundle.unet
        self.prompts, self.note = drift_prompt_plan(ctx)
        width, height = ctx.cfg.data.resolution
        scale = 2 ** (len(ctx.bundle.vae.config.block_out_channels) - 1)
        shape = (len(self.prompts), int(unet.config.in_channels), height // scale, width // scale)
        scheduler = ctx.bundle.noise_scheduler
        self.timesteps = fixed_timesteps(scheduler.config.num_train_timesteps, v.signal_timesteps)
        self.latents = seeded_normal(shape, v.validation_seed, "drift-latents")
        self.noise = [seeded_normal(shape, v.validation_seed, "drift-noise", t) for t in self.timesteps]
        self.sizes = SimpleNamespace(original_sizes=[(height, width)] * len(self.prompts),
                                     crop_top_lefts=[(0, 0)] * len(self.prompts),
                                     target_sizes=[(height, width)] * len(self.prompts))

    def _predict(self, ctx: TrainContext) -> list[torch.Tensor]:
        bundle, scheduler = ctx.bundle, ctx.bundle.noise_scheduler
        latents = self.latents.to(ctx.device)
        with autocast(ctx):
            cond = condition(bundle, self.sizes, [ctx.prompt(p) for p in self.prompts],
                             ctx.cfg.model.clip_skip, ctx.device)
            out = []
            for t, noise in zip(self.timesteps, self.noise, strict=True):
                steps = torch.full((len(self.prompts),), t, device=ctx.device, dtype=torch.long)
                noisy = scheduler.add_noise(latents, noise.to(ctx.device), steps)
                out.append(bundle.unet(noisy, steps, cond.hidden,
                                       added_cond_kwargs=cond.added_cond_kwargs).sample.float())
        return out

    @torch.no_grad()
    def measure(self, ctx: TrainContext, strengths: tuple[float, ...] = GRID_STRENGTHS) -> dict[float, float]:
        """{strength: drift} with the network as it is now; every module's strength is restored."""
        network = ctx.network
        if ctx.full or not hasattr(network, "set_multiplier"):
            return {}
        network.remove()
        try:
            base = self._predict(ctx)
        finally:
            network.attach()
        energy = sum(float(b.pow(2).sum()) for b in base)
        kept = [(module, module.multiplier) for _, module in network.loras()]
        scores: dict[float, float] = {}
        try:
            for s in strengths:
                network.set_multiplier(s)
                diff = sum(float((p - b).pow(2).sum()) for p, b in zip(self._predict(ctx), base, strict=True))
                scores[s] = diff / energy if energy > 0 else 0.0
        finally:
            for module, multiplier in kept:
                module.multiplier = multiplier
        return scores
