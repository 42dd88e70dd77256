"""Build a `TrainContext` from a config: cheap checks first, then the model.

1. Dataset scan and checks, the step arithmetic, optimizer and scheduler names, sample
   prompts — no model yet (`plan.describe_plan`, also what `--dry-run` prints).
2. Base model loaded, frozen, moved to the device; class images generated when missing
   (`class_generation`); pivotal tokens added; the network injected with a seeded init
   (`model_setup`).
3. Optimizer and LR schedule from the LR policy (`optimizer_setup`), grad scaler; latents
   cached; a resume state restored (`state.restore_into`).

This module only orders those steps; each one's rules live in the module named beside it.

`prepare(cfg, phase=…)` reports the slow parts as they begin (``loading model``, then ``caching
latents`` with done/total) so a run watched from outside — the web UI reading the events file —
can say what it is doing instead of "preparing" for minutes; without `phase` nothing is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakiln.config.schema import RunConfig
from lorakiln.training.context import TrainContext, autocast_dtype_for, pick_device, wants_text_encoder
from lorakiln.training.plan import build_data, describe_plan

if TYPE_CHECKING:
    from lorakiln.data.dataset import Dataset
    from lorakiln.data.loader import TrainData
    from lorakiln.models.bundle import ModelBundle
    from lorakiln.networks.pivotal import PivotalEmbeddings

Log = Callable[[str], None] | None
#: `phase(name, **info)`: a phase of the preparation begins (info: ``done``/``total`` ints).
Phase = Callable[..., None] | None
#: Seconds between two ``caching latents`` reports (the first and the last always go out).
CACHE_REPORT_INTERVAL = 1.0


def _throttled(phase: Callable[..., None], name: str,
               interval: float = CACHE_REPORT_INTERVAL) -> Callable[[int, int], None]:
    """A `(done, total)` progress hook that reports `name` at most every `interval` seconds, plus
    the first and the last call: caching thousands of images must not write an event per image."""
    last: float | None = None

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if last is None or done >= total or now - last >= interval:
            last = now
            phase(name, done=done, total=total)

    return report


def _warn_long_captions(dataset: Dataset, bundle: ModelBundle, log: Log,
                        pivotal: PivotalEmbeddings | None = None) -> None:
    """Captions past CLIP's 75-token window are cut silently by every trainer; say which."""
    from lorakiln.models.conditioning import overlong_captions

    def text(caption: str) -> str:
        return pivotal.replace_abstractions(caption) if pivotal is not None else caption

    long = overlong_captions(bundle.tokenizers[0], {str(i.path): text(i.caption) for i in dataset.items})
    if long and log:
        shown = ", ".join(f"{Path(p).name} ({n} tokens)" for p, n in long[:3])
        log(f"warning: {len(long)} caption(s) exceed the 75-token window and will be cut: {shown}"
            + (" …" if len(long) > 3 else "") + "; shorten them or move key words to the front")


def _quiet_libraries() -> None:
    """No loading bars from diffusers and transformers on the processes other than rank 0."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _load_frozen_model(cfg: RunConfig, device: torch.device, autocast_dtype: torch.dtype | None) -> ModelBundle:
    """The configured base model, frozen and on `device` in its training dtype."""
    from lorakiln.models.configured import load_configured_model
    from lorakiln.training.model_setup import freeze, weight_dtype_for

    m = cfg.model
    bundle = load_configured_model(m.pretrained_model, vae=m.vae, config_dir=m.config_dir,
                                   allow_pickle=m.allow_pickle)
    freeze(bundle, device, weight_dtype_for(cfg, device, autocast_dtype))
    return bundle


def _latent_cache(cfg: RunConfig, bundle: ModelBundle, output_dir: Path) -> Any:
    """The latent cache (on disk with `cache_latents_to_disk`), or None: without `cache_latents`
    every step encodes its images (needed for random_crop; less memory)."""
    if not cfg.data.cache_latents:
        return None
    from lorakiln.data.latent_cache import LatentCache, vae_fingerprint

    cache_dir = output_dir / ".cache" / "latents" if cfg.data.cache_latents_to_disk else None
    return LatentCache(vae_fingerprint(bundle.vae) + ":mode-scaled", cache_dir)


def _finish(ctx: TrainContext, data: TrainData, log: Log, phase: Phase = None) -> None:
    """EMA of the trained weights, the latent cache filled, a resume state restored, and the
    resolved config written beside the outputs."""
    from lorakiln.training.outputs import write_resolved_config

    cfg = ctx.cfg
    if cfg.train.ema_decay:
        from lorakiln.training.ema import EMA

        ctx.ema = EMA([p for g in ctx.optimizer.param_groups for p in g["params"]], cfg.train.ema_decay)
    if ctx.cache is not None and ctx.encode_fn is not None:
        if log:
            log("caching latents")
        hook = _throttled(phase, "caching latents") if phase is not None else None
        world = ctx.world
        encoded = data.cache_all(ctx.encode_fn, ctx.cache, progress=log is not None, on_progress=hook,
                                 share=(world.rank, world.size))
        if world.active:  # each process encoded its share; now every process holds them all
            from lorakiln.training.distributed import gather_latents

            held = gather_latents(ctx.cache, world)
            if log:
                log(f"latents: {held} cached, {encoded} encoded by this process, the rest by the other "
                    f"{world.size - 1}")
    if cfg.train.resume:
        from lorakiln.training.state import restore_into

        restore_into(ctx, log)
    if ctx.world.is_main:
        write_resolved_config(ctx)


def prepare(cfg: RunConfig, log: Log = print, phase: Phase = None) -> TrainContext:
    """Everything before the first step (see the module docstring for the order); `phase` hears
    of the slow parts as they begin (`training.loop.train` turns them into ``phase`` events)."""
    from lorakiln.models.configured import TINY_PREFIX, ensure_tiny_model
    from lorakiln.training import distributed, sharding
    from lorakiln.training.class_generation import class_images
    from lorakiln.training.model_setup import (
        add_pivotal_tokens,
        build_network,
        enable_memory_options,
        encode_fn,
    )
    from lorakiln.training.optimizer_setup import build_optimization, param_groups, resolve_lrs

    world = distributed.world_from_env()
    device = distributed.device_for(world) if world.active else pick_device()
    if world.active and cfg.model.pretrained_model.startswith(TINY_PREFIX):
        # Built before the process group exists: once it does, transformers' save_pretrained
        # writes weights on global rank 0 only, and every machine needs its own copy.
        ensure_tiny_model(cfg.model.pretrained_model[len(TINY_PREFIX):])
    distributed.init(world, device)
    if not world.is_main:  # rank 0 alone talks to the user and writes (distributed.py); its
        phase = None       # log is None here unless `--verbose` asked every process to print
        _quiet_libraries()
    dataset, data, plan = describe_plan(cfg, log, processes=world.size)
    sharded = sharding.wanted(cfg, world, log)  # refuses an optimizer or precision FSDP cannot run
    autocast_dtype = autocast_dtype_for(cfg.train.mixed_precision, device)
    if log:  # the line `--dry-run` printed, now from torch itself
        from lorakiln.training.device_plan import choose_device, device_line

        log(device_line(choose_device(), cfg.train.mixed_precision, cfg.train.mode))
    if phase is not None:
        phase("loading model")
    bundle = _load_frozen_model(cfg, device, autocast_dtype)
    if cfg.prior.with_prior_preservation:  # before any LoRA exists: class images show the base model
        # Rank 0 draws the missing ones into the shared folder while the others wait, then scan it.
        classes = class_images(cfg, bundle, log) if world.is_main else None
        distributed.barrier(world)
        if classes is None:
            classes = class_images(cfg, bundle, log)
        dataset, data = build_data(cfg, classes, dataset, processes=world.size)
    pivotal = add_pivotal_tokens(cfg, bundle)
    _warn_long_captions(dataset, bundle, log, pivotal)
    train_te = wants_text_encoder(cfg)
    network = build_network(cfg, bundle, train_te, device, log)
    enable_memory_options(cfg, bundle, train_te or pivotal is not None)
    if sharded:  # before the optimizer, which must hold the sharded weights
        shards = sharding.shard(bundle.unet, world, device)
        if log:
            log(shards)

    lrs = resolve_lrs(cfg, train_te)
    opt = build_optimization(cfg, param_groups(cfg, network, pivotal, lrs), lrs, plan, log)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.mixed_precision == "fp16")
    output_dir = Path(cfg.output.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx = TrainContext(cfg=cfg, plan=plan, dataset=dataset, data=data, bundle=bundle, network=network,
                       optimizer=opt.optimizer, schedule=opt.schedule, scaler=scaler,
                       cache=_latent_cache(cfg, bundle, output_dir), device=device,
                       autocast_dtype=autocast_dtype, train_text_encoder=train_te, output_dir=output_dir,
                       encode_fn=encode_fn(bundle.vae), lrs=lrs, optimizer_desc=opt.description,
                       warmup_steps=opt.warmup_steps, pivotal=pivotal, world=world, sharded=sharded)
    distributed.broadcast_parameters([p for g in ctx.optimizer.param_groups for p in g["params"]], world)
    from lorakiln.training.preservation import build_preservation

    ctx.preservation = build_preservation(ctx)
    _finish(ctx, data, log, phase)
    return ctx

