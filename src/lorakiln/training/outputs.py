"""What a run writes: LoRA files (kohya format), the diffusers file, states, names, logs.

Names follow kohya so AUTOMATIC1111 users find what kohya_ss tutorials show: `last.safetensors` at the
end, `last-000001.safetensors` per saved epoch, `last-step00000100.safetensors` per N steps,
and `last-state/` for resume.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorakiln.atomic import write_text_atomic
from lorakiln.config.load import dump_config
from lorakiln.training import sharding
from lorakiln.training.state import save_state

if TYPE_CHECKING:
    from lorakiln.networks.metadata import TrainingInfo
    from lorakiln.training.context import TrainContext

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}


def final_name(ctx: TrainContext) -> str:
    return ctx.cfg.output.output_name


def epoch_name(ctx: TrainContext, epoch: int) -> str:
    return f"{ctx.cfg.output.output_name}-{epoch:06d}"


def step_name(ctx: TrainContext, step: int) -> str:
    return f"{ctx.cfg.output.output_name}-step{step:08d}"


def state_dir(ctx: TrainContext) -> Path:
    return ctx.output_dir / f"{ctx.cfg.output.output_name}-state"


def logging_dir(ctx: TrainContext) -> Path:
    cfg = ctx.cfg.output
    return Path(cfg.logging_dir) if cfg.logging_dir else ctx.output_dir / "logs"


def current_lrs(ctx: TrainContext) -> dict[str, float]:
    """Learning rate per parameter group (adaptive optimizers report lr × d)."""
    out = {}
    for i, group in enumerate(ctx.optimizer.param_groups):
        lr = group.get("lr") or 0.0
        if "d" in group:  # DAdaptation / Prodigy: the effective rate is d·lr
            lr = lr * group["d"]
        out[group.get("name", f"group{i}")] = float(lr)
    return out


def write_resolved_config(ctx: TrainContext) -> Path:
    """The config as resolved (preset, overrides, absolute paths) beside the outputs."""
    path = ctx.output_dir / f"{ctx.cfg.output.output_name}_config.toml"
    write_text_atomic(path, "# resolved by lorakiln: preset + file + --set overrides\n" + dump_config(ctx.cfg))
    return path


def training_info(ctx: TrainContext, *, final: bool) -> TrainingInfo:
    """Fill the networks package's `TrainingInfo` from the run (metadata.py turns it into ss_*)."""
    from lorakiln.networks.metadata import TrainingInfo

    cfg, pos, d = ctx.cfg, ctx.position, ctx.cfg.data
    unet_lr, te_lr = ctx.lrs
    return TrainingInfo(
        output_name=cfg.output.output_name,
        training_started_at=ctx.started_at,
        training_finished_at=time.time() if final else None,
        session_id=ctx.session_id,
        epoch=pos.epoch,
        num_epochs=ctx.plan.num_epochs,
        steps=pos.global_step,
        max_train_steps=ctx.plan.total_steps,
        num_train_images=ctx.dataset.num_repeated_images,
        num_batches_per_epoch=ctx.plan.batches_per_epoch,
        batch_size=cfg.train.train_batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        resolution=tuple(d.resolution),
        tag_frequency=ctx.dataset.tag_frequency(),
        dataset_dirs=ctx.dataset.dataset_dirs_info(),
        bucket_info=ctx.data.bucket_info(),
        enable_bucket=d.enable_bucket,
        caption_dropout_rate=d.caption_dropout_rate,
        caption_tag_dropout_rate=d.caption_tag_dropout_rate,
        shuffle_caption=d.shuffle_caption,
        keep_tokens=d.keep_tokens,
        flip_aug=d.flip_aug,
        learning_rate=cfg.train.learning_rate,
        unet_lr=unet_lr,
        text_encoder_lr=te_lr,
        optimizer=ctx.optimizer_desc,
        lr_scheduler=cfg.train.lr_scheduler,
        lr_warmup_steps=int(ctx.warmup_steps),
        max_grad_norm=cfg.train.max_grad_norm,
        noise_offset=cfg.train.noise_offset or None,
        min_snr_gamma=cfg.train.min_snr_gamma,
        seed=cfg.train.seed,
        mixed_precision=cfg.train.mixed_precision,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        clip_skip=cfg.model.clip_skip,
        sd_model_name=ctx.bundle.name,
        sd_model_hash=ctx.bundle.sha256,
        vae_name=Path(cfg.model.vae).name if cfg.model.vae else None,
        prediction_type=ctx.bundle.prediction_type,
        trigger_phrase=cfg.output.trigger_phrase,
    )


def save_lora(ctx: TrainContext, stem: str, *, final: bool = False) -> Path:
    """Write `<output_dir>/<stem>.safetensors`: a kohya LoRA, or the whole model in full mode.
    With `train.ema_decay` the averaged weights are written."""
    with ctx.ema.applied() if ctx.ema is not None else contextlib.nullcontext():
        return save_model(ctx, stem, final=final) if ctx.full else _save_lora(ctx, stem, final=final)


def save_model(ctx: TrainContext, stem: str, *, final: bool = False) -> Path:
    """Full fine-tuning: the model as one single-file checkpoint (A1111/ComfyUI's `models/
    Stable-diffusion`), and at the end as a diffusers folder when `save_diffusers` is set."""
    from lorakiln.models.save import save_bundle_diffusers, save_bundle_single_file

    path, bundle = ctx.output_dir / f"{stem}.safetensors", ctx.bundle
    if ctx.sharded:  # every process gathers the sharded U-Net; rank 0 writes a whole copy
        unet = sharding.gathered_unet(bundle.unet)
        if unet is None:
            return path
        bundle = replace(bundle, unet=unet)
    save_bundle_single_file(bundle, path, dtype=SAVE_DTYPES[ctx.cfg.output.save_precision])
    if final and ctx.cfg.output.save_diffusers:
        save_bundle_diffusers(bundle, ctx.output_dir / stem)
    ctx.last_saved = path
    return path


def _save_lora(ctx: TrainContext, stem: str, *, final: bool = False) -> Path:
    """Write `<output_dir>/<stem>.safetensors` in kohya format (and the diffusers file at the end)."""
    from lorakiln.networks.export import save_diffusers_lora, save_kohya_lora
    from lorakiln.networks.metadata import build_metadata

    path = ctx.output_dir / f"{stem}.safetensors"
    metadata = build_metadata(training_info(ctx, final=final), ctx.network,
                              minimal=ctx.cfg.output.no_metadata)
    save_kohya_lora(ctx.network, path, metadata, SAVE_DTYPES[ctx.cfg.output.save_precision])
    if final and ctx.cfg.output.save_diffusers:
        save_diffusers_lora(ctx.network, ctx.output_dir / "pytorch_lora_weights.safetensors")
    if ctx.pivotal is not None:
        from lorakiln.networks.pivotal import embeddings_path, save_embeddings

        save_embeddings(embeddings_path(path), ctx.pivotal, family=ctx.bundle.family, title=stem,
                        abstraction=ctx.cfg.pivotal.token_abstraction, keys=ctx.bundle.family.ti_file_keys)
    ctx.last_saved = path
    return path


def save_training_state(ctx: TrainContext) -> Path:
    """Write `<output_name>-state/` (adapter, optimizer, schedule, RNGs, loop position). A sharded
    run's processes all gather (whole weights, and the optimizer state keyed by parameter name,
    sharding.py); rank 0 writes."""
    ema = ctx.ema.state_dict() if ctx.ema else {}
    if ctx.sharded:
        network, optimizer = sharding.full_state(ctx.network), sharding.full_optimizer_state(ctx.network, ctx.optimizer)
        if not ctx.world.is_main:
            return state_dir(ctx)
    else:
        network, optimizer = ctx.network.state_dict(), ctx.optimizer.state_dict()
    return save_state(
        state_dir(ctx),
        network_state=network | (ctx.pivotal.state_dict() if ctx.pivotal else {}) | ema,
        optimizer_state=optimizer,
        schedule=ctx.schedule,
        scaler=ctx.scaler,
        position=replace(ctx.position, processes=ctx.world.size, samples_in_epoch=_samples_consumed(ctx)),
        config=ctx.cfg.model_dump(mode="json"),
    )


def _samples_consumed(ctx: TrainContext) -> int:
    """Samples of the current epoch's global batches already trained (for a resume on another
    number of processes, state.py)."""
    pos = ctx.position
    return sum(len(b) for b in ctx.data.epoch_batches(pos.epoch)[:pos.batch_in_epoch])
