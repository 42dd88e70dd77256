"""The training loop, readable top to bottom.

1. `prepare` checks everything and builds the run (setup.py).
2. For each epoch, for each group of `gradient_accumulation_steps` batches (one bucket each):
   forward + backward, clip, optimizer and LR step.
3. Every `detect_anomaly_every` steps the loss and gradient norm are checked for NaN/inf.
4. LoRAs (and optionally states) are saved per epoch / per N steps, and at the end.
5. SIGINT/SIGTERM stop the loop after the current step with a saved state and LoRA; while
   loading, caching or rendering they stop at once (signals.py).

The whole run holds `<output_dir>/<output_name>.lock` (lock.py), taken before the model loads,
and starts by clearing what interrupted saves of that output left (recovery.py).

Callbacks hear ``phase`` events as each slow part begins (loading the model, caching latents,
rendering samples, saving, the final grids; listed in events.py), so a watcher can tell a run
that is rendering or saving from one that is stuck between two step events.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakiln.config.schema import RunConfig
from lorakiln.errors import LorakilnError, TrainingError
from lorakiln.training import (
    distributed,
    file_signals,
    outputs,
    recovery,
    saving,
    sharding,
    trace,
    validation,
)
from lorakiln.training.lock import OutputLock
from lorakiln.training.preservation import backward_preservation
from lorakiln.training.progress import TrainLogger
from lorakiln.training.render_plan import EtaClock, job_size, render_schedule
from lorakiln.training.save_errors import reported
from lorakiln.training.signals import StopFlag, StopSignal, stop_on_signals
from lorakiln.training.step import compute_loss, data_step

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext

Callback = Callable[[str, dict[str, Any]], None]


class TrainingInterrupted(LorakilnError):
    """Raised after a signal stopped training and the state and LoRA were saved."""

    def __init__(self, message: str, lora: Path, state: Path):
        super().__init__(message)
        self.lora, self.state = lora, state


@dataclass
class TrainResult:
    """What a finished run produced. `epochs` counts completed epochs."""

    lora_path: Path
    state_path: Path | None
    steps: int
    epochs: int
    last_loss: float | None
    #: The epochs × strengths grid written at the end, if any.
    grid_path: Path | None = None
    #: The epochs × sample prompts grid (at strength 1.0), when there are several prompts.
    prompts_grid_path: Path | None = None


def train(cfg: RunConfig, callbacks: list[Callback] | None = None, *, progress: bool = True,
          verbose: bool = False) -> TrainResult:
    """Run a whole training as the config says; the CLI and the UI both call this.

    A signal before the first step (loading, caching) raises `StopSignal`: nothing is saved
    because nothing was trained yet. `verbose` (`lorakiln train --verbose`) lets every process
    of a multi-process run print, prefixed ``[process R]``, and prints each micro-batch's bucket
    and images (`TrainContext.trace`), so how the data was split can be read off the console."""
    from lorakiln.training.prepare import prepare

    world = distributed.world_from_env()
    if not world.is_main:  # rank 0 alone holds the lock, cleans up, reports and writes events
        progress, callbacks = False, []
    log = print if progress else None
    if verbose and world.active and not world.is_main:
        log = trace.prefixed(world.rank)
    callbacks = callbacks or []
    flag = StopFlag()
    out = cfg.output
    lock = OutputLock(out.output_dir, out.output_name, log=log) if world.is_main else contextlib.nullcontext()
    with stop_on_signals(flag), lock, _process_group(world):
        # A missing or incomplete resume state fails in prepare's preflight, before the model loads.
        if world.is_main:
            recovery.clean_leftovers(Path(out.output_dir), out.output_name, log)
        _emit(callbacks, "phase", name="preparing")

        def phase(name: str, **info: Any) -> None:
            _emit(callbacks, "phase", name=name, **info)

        with flag.raising():
            ctx = prepare(cfg, log=log, phase=phase)
        if verbose:  # every process's batches, each line naming its process
            ctx.trace = trace.prefixed(world.rank) if world.active else print
        _emit(callbacks, "phase", name="training")
        return run_loop(ctx, flag, callbacks, progress=progress)


@contextlib.contextmanager
def _process_group(world: distributed.World) -> Iterator[None]:
    """Leave the process group on the way out (prepare joins it), whatever happened."""
    try:
        yield
    finally:
        distributed.shutdown(world)


def _emit(callbacks: list[Callback], event: str, **info: Any) -> None:
    for cb in callbacks:
        cb(event, info)


def _non_finite_error(ctx: TrainContext, step: int, paths: list[str], what: str) -> TrainingError:
    files = "\n".join(f"    {p}" for p in paths)
    kept = f"The last good checkpoint is {ctx.last_saved}." if ctx.last_saved else "No checkpoint was saved yet."
    return TrainingError(
        f"training stopped at step {step}: the {what} is not finite (NaN or inf).\n"
        f"  batch images:\n{files}\n"
        "  likely causes: a learning rate too high for this optimizer (lower unet_lr / text_encoder_lr), "
        "fp16 overflow (use mixed_precision = 'bf16' or 'no'), a large noise_offset, or a corrupt image "
        f"above.\n  {kept}"
    )


def _optimizer_step(ctx: TrainContext, group: list[Any], epoch: int, step: int, check: bool) -> float | None:
    """Accumulate gradients over `group` batches, clip, step. Returns the loss when checked."""
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    total = torch.zeros((), device=ctx.device)
    paths: list[str] = []
    world = ctx.world
    for micro, refs in enumerate(group):
        at = data_step(ctx, step, micro)  # one data step per micro-batch (step.data_step)
        divisor: float = len(group)
        if world.active:  # this process's slice of the global batch (distributed.py)
            mine, first = distributed.shard(refs, world)
            share = distributed.loss_share(len(mine), len(refs), world)
            refs, first = (mine, first) if mine else (refs[:1], 0)  # no sample: a zero-weighted one
            divisor = len(group) / share if share else math.inf
        batch = ctx.data.load_batch(refs, epoch=epoch, step=at, cache=ctx.cache,
                                    encode_fn=ctx.encode_fn)
        if world.active:
            per_sample = len(batch) // len(refs)  # 2 with prior preservation's class rows
            batch.global_rows = (per_sample * first, per_sample * len(group[micro]))
        paths += [str(p) for p in batch.paths]
        if ctx.trace is not None:  # `--verbose` (trace.py)
            ctx.trace(trace.batch_line(batch, step, epoch, micro, empty=world.active and not share))
        with _sharded_use(ctx, "a training step"):  # FSDP gathers and reduce-scatters in here
            loss = compute_loss(ctx, batch, step, micro) / divisor
            ctx.scaler.scale(loss).backward()
        total += loss.detach()
        kept = backward_preservation(ctx, batch, step, micro, divisor)  # preservation.py
        if kept is not None:
            total += kept
    distributed.average_gradients(params, world)  # once per optimizer step: no sync on micro-steps
    ctx.scaler.unscale_(ctx.optimizer)
    max_norm = ctx.cfg.train.max_grad_norm or math.inf
    if ctx.sharded:
        grad_norm = sharding.clip_grad_norm(params, max_norm)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    value = None
    if check:
        value = float(distributed.mean_over(total, world))  # every process checks the same value
        fp16 = ctx.scaler.is_enabled()  # with loss scaling an inf gradient is a skipped step, not an error
        if not math.isfinite(value):
            raise _non_finite_error(ctx, step + 1, paths, "loss")
        if not fp16 and not torch.isfinite(grad_norm):
            raise _non_finite_error(ctx, step + 1, paths, "gradient")
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    if ctx.ema is not None:
        ctx.ema.update()
    if ctx.pivotal is not None and ctx.pivotal.is_training:
        ctx.pivotal.after_optimizer_step()
    ctx.schedule.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return value


def _sharded_use(ctx: TrainContext, what: str) -> contextlib.AbstractContextManager[None]:
    """A lost process inside FSDP's own collectives (a sharded run's forward and backward) ends the
    run as `ProcessLost`, as one in the loop's collectives does; nothing for other runs."""
    return distributed.collective(what, narrow=True) if ctx.sharded else contextlib.nullcontext()


def _apply_pivots(ctx: TrainContext, logger: TrainLogger) -> None:
    """Stop training parts whose share of the run is over: the new token embeddings after
    `train_text_encoder_ti_frac` (diffusers advanced SDXL recipe: "pivoting halfway") and the text-encoder LoRA after
    `train_text_encoder_frac`; the U-Net LoRA trains on. Called after every step and on resume."""
    step, total = ctx.position.global_step, ctx.plan.total_steps
    ti = ctx.pivotal
    if ti is not None and ti.is_training and step >= int(ctx.cfg.pivotal.train_text_encoder_ti_frac * total):
        ti.freeze()
        logger.write(f"step {step}: pivot — the new token embeddings are now fixed")
    frac = ctx.cfg.train.train_text_encoder_frac
    if ctx.train_text_encoder and frac < 1.0 and step >= int(frac * total):
        ctx.network.freeze_text_encoders()
        ctx.train_text_encoder = False
        logger.write(f"step {step}: the text encoder is now fixed (train_text_encoder_frac = {frac})")


def _validate(ctx: TrainContext, logger: TrainLogger, callbacks: list[Callback], flag: StopFlag, *,
              epoch_end: bool = False, final: bool = False) -> None:
    """Validation and sample renders that are due now (validation.py). A signal stops a render at
    once; the caller then saves (render restores the RNGs and module modes on the way out).

    Prompts with the same settings are drawn together (`validation.render_groups`: one pipeline,
    batched), a group at a time, so a ``rendering samples`` phase event (done/total prompts over
    all the jobs due now) precedes each group and the console shows a ``samples`` bar: a render of
    many prompts is minutes on a slow machine. The event is written outside `flag.raising()`, so
    a stop never cuts a line of the events file.
    """
    if not saving.takes_part(ctx):
        return
    # A sharded U-Net renders on every process in step, so no process may stop mid-render: a
    # signal then takes effect at the next step (sharding.py).
    stoppable = flag.raising if not ctx.sharded else contextlib.nullcontext
    jobs = validation.due_jobs(ctx, epoch_end=epoch_end, final=final)
    total, done = sum(len(prompts) for _, prompts in jobs), 0
    for folder, prompts in jobs:
        rendered: list[Any] = [None] * len(prompts)
        try:
            with logger.sub_bar(sum(p.batch_count * p.batch_size for p in prompts), folder) as bar:
                for group in validation.render_groups(prompts):
                    _emit(callbacks, "phase", name="rendering samples", done=done, total=total, folder=folder,
                          step=ctx.position.global_step)
                    started = time.perf_counter()
                    with stoppable(), _sharded_use(ctx, "a sample render"):
                        images = validation.render(ctx, [prompts[i] for i in group])
                    logger.rendered(job_size([prompts[i] for i in group])[1], time.perf_counter() - started)
                    for i, drawn in zip(group, images, strict=True):
                        rendered[i] = drawn
                        bar.update(len(drawn))
                    done += len(group)
        except StopSignal:
            logger.write(f"{flag.name}: {folder} renders stopped")
            return
        if not ctx.world.is_main:  # a sharded run's other processes rendered along; rank 0 writes
            continue
        with reported(ctx, ctx.output_dir / folder):
            paths = validation.save(ctx, folder, rendered)
        for i, (params, images) in enumerate(zip(prompts, rendered, strict=True)):
            logger.images(f"{folder}/{i}: {params.prompt[:60]}", validation.as_batch([g.image for g in images]),
                          ctx.position.global_step)
        _emit(callbacks, folder, paths=paths, step=ctx.position.global_step)


def _stop_if_requested(ctx: TrainContext, flag: StopFlag, logger: TrainLogger,
                       callbacks: list[Callback]) -> None:
    """After a signal: save a LoRA and a state at this step, then raise `TrainingInterrupted`.
    With several processes a signal to any of them stops all of them at the same step."""
    if not distributed.any_process(flag.requested, ctx.world, ctx.device):
        return
    step = ctx.position.global_step
    _emit(callbacks, "phase", name="saving", step=step)
    lora = saving.save_lora(ctx, outputs.step_name(ctx, step))
    state = saving.save_state(ctx)
    logger.write(f"{flag.name}: saved {lora} and state {state}; continue with --resume {state}")
    raise TrainingInterrupted(f"training interrupted by {flag.name} at step {step}", lora, state)


def _final_grids(ctx: TrainContext, flag: StopFlag, logger: TrainLogger,
                 callbacks: list[Callback]) -> tuple[Path | None, Path | None]:
    """The final grids, which a signal skips at once: the LoRA is already complete."""
    if not ctx.world.is_main:
        return None, None
    _emit(callbacks, "phase", name="final grids")
    try:
        with reported(ctx, ctx.output_dir), flag.raising():
            return validation.final_grids(ctx, progress=not logger.bar.disable)
    except StopSignal as stop:
        logger.write(f"{stop.name}: final grids skipped; the trained LoRA is complete")
        return None, None


def _eta_clock(ctx: TrainContext) -> EtaClock:
    """The bar's time-left clock, with every render the run will do (render_plan.py)."""
    v, data = ctx.cfg.validation, ctx.cfg.data
    jobs = render_schedule(ctx.cfg, ctx.plan, validation.validation_params(ctx) if v.validation_prompt else [],
                           validation.sample_params(ctx) if v.sample_prompts else [])
    width, height = data.resolution
    return EtaClock(jobs, ctx.position.global_step, ctx.cfg.train.train_batch_size * width * height)


def run_loop(ctx: TrainContext, flag: StopFlag, callbacks: list[Callback], progress: bool = True) -> TrainResult:
    cfg, pos, plan = ctx.cfg, ctx.position, ctx.plan
    accum = cfg.train.gradient_accumulation_steps
    main = ctx.world.is_main
    tensorboard = outputs.logging_dir(ctx) if ctx.cfg.output.log_with == "tensorboard" and main else None
    logger = TrainLogger(plan.total_steps, pos.global_step, tensorboard, enabled=progress and main,
                         eta=_eta_clock(ctx), quiet=not main)
    last_loss: float | None = None
    ctx.network.train()
    ctx.signals = file_signals.start(ctx, logger) if saving.takes_part(ctx) else None

    def emit(event: str, **info: Any) -> None:
        _emit(callbacks, event, **info)

    _apply_pivots(ctx, logger)  # a resumed run may already be past a pivot
    try:
        while pos.epoch < plan.num_epochs and pos.global_step < plan.total_steps:
            batches = ctx.data.epoch_batches(pos.epoch)
            epoch_losses: list[float] = []
            while pos.batch_in_epoch < len(batches) and pos.global_step < plan.total_steps:
                group = batches[pos.batch_in_epoch: pos.batch_in_epoch + accum]
                check = (pos.global_step + 1) % cfg.train.detect_anomaly_every == 0
                started = time.perf_counter()
                loss = _optimizer_step(ctx, group, pos.epoch, pos.global_step, check)
                pos.global_step += 1
                pos.batch_in_epoch += len(group)
                _apply_pivots(ctx, logger)
                if loss is not None:
                    last_loss = loss
                    epoch_losses.append(loss)
                logger.step(pos.global_step, pos.epoch, loss, outputs.current_lrs(ctx), time.perf_counter() - started)
                _emit(callbacks, "step", step=pos.global_step, epoch=pos.epoch, loss=loss,
                      total_steps=plan.total_steps, time_left=logger.time_left, renders_left=logger.renders_left)
                _validate(ctx, logger, callbacks, flag)
                if cfg.output.save_every_n_steps and pos.global_step % cfg.output.save_every_n_steps == 0:
                    saving.checkpoint(ctx, outputs.step_name(ctx, pos.global_step), emit)
                _stop_if_requested(ctx, flag, logger, callbacks)
            if pos.batch_in_epoch >= len(batches):
                logger.epoch_end(pos.epoch, pos.global_step,
                                 sum(epoch_losses) / len(epoch_losses) if epoch_losses else None)
                pos.epoch += 1
                pos.batch_in_epoch = 0
                _emit(callbacks, "epoch", epoch=pos.epoch, step=pos.global_step)
                if pos.epoch < plan.num_epochs:
                    _validate(ctx, logger, callbacks, flag, epoch_end=True)
                every = cfg.output.save_every_n_epochs
                if every and pos.epoch % every == 0 and pos.epoch < plan.num_epochs:
                    pos.saved_epochs.append(pos.epoch)
                    saving.checkpoint(ctx, outputs.epoch_name(ctx, pos.epoch), emit)
                if pos.epoch < plan.num_epochs and pos.global_step < plan.total_steps:
                    _stop_if_requested(ctx, flag, logger, callbacks)  # a signal during the epoch-end renders
        # Training is complete: a signal from here on only skips the remaining renders.
        _validate(ctx, logger, callbacks, flag, final=True)
        _emit(callbacks, "phase", name="saving", step=pos.global_step)
        final = saving.save_lora(ctx, outputs.final_name(ctx), final=True)
        state = saving.save_state(ctx) if cfg.output.save_state else None
        saving.signals(ctx, final, emit)
        if ctx.signals is not None:
            ctx.signals.summary(ctx, emit)
        grid, sheet = _final_grids(ctx, flag, logger, callbacks)
        for kind, path in (("epochs × strengths", grid), ("epochs × prompts", sheet)):
            if path is not None:
                logger.write(f"{kind} grid: {path}")
        _emit(callbacks, "done", path=final, step=pos.global_step, grid=grid, prompts_grid=sheet)
        return TrainResult(final, state, pos.global_step, pos.epoch, last_loss, grid, sheet)
    except distributed.ProcessLost as lost:
        raise saving.after_loss(ctx, lost, logger) from lost
    finally:
        logger.close()
