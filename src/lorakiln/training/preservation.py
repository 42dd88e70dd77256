"""Output preservation: a loss that keeps the LoRA's prediction on prompts it should leave alone
equal to the base model's.

Differential output preservation follows ai-toolkit (ostris, `diff_output_preservation`; the
sd-scripts-based trainers that adopted it use the same three knobs: on/off, class, multiplier):
for every instance image whose caption holds the trigger word, the *class prompt* (the caption
with the trigger replaced by the class word, `preservation_plan.ClassWords`) is predicted on the
step's own noisy latents and timesteps, once with the network off — the base model, the target,
no gradients — and once with it on; their mean-squared difference × `preservation_weight` is a
second loss. Blank prompt preservation (ai-toolkit's BPP) does the same with the empty prompt, and
`preservation_prompts` with the user's prompts of other things to leave alone, one per image per
step in turn.
Unlike DreamBooth's prior preservation (Ruiz et al. 2023) no class images are generated: the base
model's prediction on the training latents is the prior.

Rules, and why:

* **Same noisy latents and timesteps** as the training step (`step.noisy_inputs`, a pure function
  of seed, step and micro-batch): no random number is drawn here, so the run's random streams are
  those of a run without preservation and a resumed run repeats them exactly.
* **Instance rows only**: class-image rows (prior preservation) already have their own loss.
* **The prompts share the passes**: with DOP and BPP (and user prompts) on, the rows are
  concatenated into one batch of two (three) times the size, so the launch overheads are paid once.
* **User prompts in turn**: image row i of data step s gets prompt (s × rows + i) mod len(prompts),
  a pure function of the step, so resume repeats it; their base conditioning is cached like the
  blank prompt's (fixed prompts).
* **Text encoders.** The target is the base model all the way through: the text-encoder LoRA is
  off for its conditioning too, since what must not change is the output of the whole model
  without the LoRA. The prediction has the LoRA on in both (the file is applied to both in every
  client), with gradients into the text-encoder LoRA while it trains — so the text-encoder LoRA is
  also held to the base on these prompts. ai-toolkit refuses DOP with a trained text encoder;
  here it works, at the cost of one more text-encoder pass with gradients. The base conditioning
  never changes (frozen encoders, LoRA off, and a class prompt holds no pivotal tokens: the trigger
  is replaced by the class word), so it is cached per prompt while captions are deterministic
  (always for the blank prompt); without a text-encoder LoRA the prediction reuses it.
* **Separate backward** (the loop calls `preservation_loss` after the main loss's backward), as
  ai-toolkit does, so the two graphs are never in memory together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lorakiln.models.conditioning import Conditioning, TextCache, encode_text, time_ids
from lorakiln.training.preservation_plan import ClassWords

if TYPE_CHECKING:
    from lorakiln.data.loader import Batch
    from lorakiln.training.context import TrainContext


@contextlib.contextmanager
def network_off(network: Any) -> Iterator[None]:
    """Every adapter at multiplier 0 — the base model bit for bit, as the adapters skip their
    branch at 0 — and back to each module's own multiplier afterwards."""
    modules = [m for _, m in network.loras()]
    saved = [m.multiplier for m in modules]
    try:
        for m in modules:
            m.multiplier = 0.0
        yield
    finally:
        for m, value in zip(modules, saved, strict=True):
            m.multiplier = value


class OutputPreservation:
    """The preservation loss of one run: which rows and prompts, and the base-conditioning cache."""

    def __init__(self, words: dict[Path, ClassWords], *, class_prompts: bool, blank: bool,
                 class_weight: float, blank_weight: float, cache_class: bool,
                 prompts: list[str] | None = None, prompts_weight: float = 1.0) -> None:
        self.words, self.class_prompts, self.blank = words, class_prompts, blank
        self.class_weight, self.blank_weight = class_weight, blank_weight
        self.cache_class = cache_class
        self.prompts, self.prompts_weight = list(prompts or []), prompts_weight
        #: Prompts whose base conditioning never changes: cached for the run.
        self.fixed = {"", *self.prompts}
        #: Base-model (network off) text outputs per prompt: valid for the whole run.
        self.base_cache = TextCache()

    def rows(self, batch: Batch, data_step: int = 0) -> tuple[list[int], list[str], list[float]]:
        """(batch row, prompt, weight) of every preservation row: the class prompts first, then
        the blank prompts, then the user's prompts in turn (`data_step` picks them); each kind's
        weight is spread over its rows (a mean per kind)."""
        idx: list[int] = []
        prompts: list[str] = []
        weights: list[float] = []
        instance = range(batch.num_instance)
        if self.class_prompts:
            found = [(i, self.words[p].class_prompt(c)) for i, p, c in zip(instance, batch.paths, batch.captions, strict=False)
                     if p in self.words]
            found = [(i, q) for i, q in found if q is not None]
            idx += [i for i, _ in found]
            prompts += [q for _, q in found]  # type: ignore[misc]
            weights += [self.class_weight / len(found)] * len(found)
        if self.blank:
            idx += list(instance)
            prompts += [""] * len(instance)
            weights += [self.blank_weight / len(instance)] * len(instance)
        if self.prompts:
            n = len(instance)
            idx += list(instance)
            prompts += [self.prompts[(data_step * n + i) % len(self.prompts)] for i in instance]
            weights += [self.prompts_weight / n] * n
        return idx, prompts, weights

    def _encode(self, ctx: TrainContext, prompts: list[str], cached: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Base-model text outputs (the caller switches the network off), from the cache when allowed."""
        bundle, clip_skip = ctx.bundle, ctx.cfg.model.clip_skip
        use_cache = cached or all(p in self.fixed for p in prompts)
        if use_cache:
            return self.base_cache.encode(bundle, prompts, clip_skip)
        return encode_text(bundle, prompts, clip_skip)

    def _conditioning(self, ctx: TrainContext, batch: Batch, rows: list[int], prompts: list[str], *,
                      base: bool) -> Conditioning:
        """Conditioning of the preservation rows: base (network off, no grad, cacheable) or with
        the network on (see the module docstring for the text-encoder rule)."""
        bundle = ctx.bundle
        if base:
            with network_off(ctx.network), torch.no_grad():
                hidden, pooled = self._encode(ctx, prompts, self.cache_class)
        else:
            grad = torch.enable_grad() if ctx.train_text_encoder else torch.no_grad()
            cache = ctx.active_text_cache()
            with grad:
                hidden, pooled = (cache.encode(bundle, prompts, ctx.cfg.model.clip_skip) if cache is not None
                                  else encode_text(bundle, prompts, ctx.cfg.model.clip_skip))
        extra: dict[str, torch.Tensor] = {}
        if bundle.family.uses_pooled_text and pooled is not None:
            extra["text_embeds"] = pooled
        if bundle.family.uses_time_ids:  # SDXL: each row keeps its own image's size/crop ids
            sub = SimpleNamespace(original_sizes=[batch.original_sizes[i] for i in rows],
                                  crop_top_lefts=[batch.crop_top_lefts[i] for i in rows],
                                  target_sizes=[batch.target_sizes[i] for i in rows])
            extra["time_ids"] = time_ids(sub, ctx.device).to(hidden.dtype)
        return Conditioning(hidden, extra or None)

    def loss(self, ctx: TrainContext, batch: Batch, step: int, micro: int) -> torch.Tensor | None:
        """The weighted preservation loss of one micro-batch, or None when no row qualifies."""
        from lorakiln.training.step import data_step, noisy_inputs

        rows, prompts, weights = self.rows(batch, data_step(ctx, step, micro))
        if not rows:
            return None
        noisy, timesteps, _ = noisy_inputs(ctx, batch, step, micro)
        index = torch.tensor(rows, device=noisy.device)
        noisy, timesteps = noisy[index], timesteps[index]
        unet = ctx.bundle.unet
        autocast = (torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)
                    if ctx.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:  # text encoding inside it too, as in `step.compute_loss` (fp16 weights)
            base = self._conditioning(ctx, batch, rows, prompts, base=True)
            with network_off(ctx.network), torch.no_grad():
                target = unet(noisy, timesteps, base.hidden, added_cond_kwargs=base.added_cond_kwargs).sample
            on = (base if not ctx.network.trains_text_encoder
                  else self._conditioning(ctx, batch, rows, prompts, base=False))
            pred = unet(noisy, timesteps, on.hidden, added_cond_kwargs=on.added_cond_kwargs).sample
        per_row = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_row * torch.tensor(weights, device=per_row.device)).sum()


def build_preservation(ctx: TrainContext) -> OutputPreservation | None:
    """The run's preservation loss from `[preservation]`, or None when it is off."""
    from lorakiln.training.preservation_plan import class_words

    p, d = ctx.cfg.preservation, ctx.cfg.data
    if not p.enabled:
        return None
    random_captions = bool(d.shuffle_caption or d.caption_dropout_rate or d.caption_tag_dropout_rate
                           or d.caption_dropout_every_n_epochs)
    return OutputPreservation(class_words(ctx.cfg, ctx.dataset), class_prompts=p.diff_output_preservation,
                              blank=p.blank_prompt_preservation, class_weight=p.preservation_weight,
                              blank_weight=p.blank_prompt_weight,
                              cache_class=d.cache_text_encoder_outputs and not random_captions,
                              prompts=p.preservation_prompts, prompts_weight=p.preservation_prompts_weight)


def backward_preservation(ctx: TrainContext, batch: Batch, step: int, micro: int,
                          share: float) -> torch.Tensor | None:
    """Backward of the preservation loss (divided by `share`, the accumulation group's size), after
    the main loss's own backward; returns the detached value for the logged loss."""
    if ctx.preservation is None:
        return None
    loss = ctx.preservation.loss(ctx, batch, step, micro)
    if loss is None:
        return None
    loss = loss / share
    ctx.scaler.scale(loss).backward()
    return loss.detach()
