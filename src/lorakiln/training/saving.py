"""What the loop writes, and which processes take part: LoRAs (or models), states and the
per-file signals, at a checkpoint, after a stop signal, at the end, and after a lost process.

Rank 0 alone writes (distributed.py). In a sharded run (sharding.py) every process must take part
in a save, which gathers the sharded weights, and in the signals, which run the sharded U-Net;
the other processes then write nothing. Disk errors become one message (save_errors.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.training import distributed, outputs
from lorakiln.training.save_errors import reported

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext
    from lorakiln.training.progress import TrainLogger

Emit = Callable[..., None]


def takes_part(ctx: TrainContext) -> bool:
    """This process runs the saves and signals: rank 0, and every process of a sharded run."""
    return ctx.world.is_main or ctx.sharded


def save_lora(ctx: TrainContext, stem: str, *, final: bool = False) -> Path:
    """`outputs.save_lora`, with a full disk reported as one message; on a process that does not
    take part, only the path rank 0 writes."""
    path = ctx.output_dir / f"{stem}.safetensors"
    if not takes_part(ctx):
        return path
    with reported(ctx, path):
        return outputs.save_lora(ctx, stem, final=final)


def save_state(ctx: TrainContext) -> Path:
    if not takes_part(ctx):
        return outputs.state_dir(ctx)
    with reported(ctx, outputs.state_dir(ctx)):
        return outputs.save_training_state(ctx)


def checkpoint(ctx: TrainContext, name: str, emit: Emit) -> None:
    """Save an intermediate LoRA and, with `output.save_state`, the state beside it.

    The schema promises state with every saved LoRA, so a resume can start from any saved epoch.
    """
    if not takes_part(ctx):
        return
    emit("phase", name="saving", step=ctx.position.global_step)
    path = save_lora(ctx, name)
    if ctx.cfg.output.save_state:
        save_state(ctx)
    emit("save", path=path)
    signals(ctx, path, emit)


def signals(ctx: TrainContext, path: Path, emit: Emit) -> None:
    """Validation loss and drift of the file just saved (file_signals.py), when enabled."""
    if ctx.signals is None:
        return
    if ctx.sharded:  # FSDP's collectives run inside the validation loss's forwards
        with distributed.collective("the per-file signals", narrow=True):
            ctx.signals.after_save(ctx, path, emit)
    else:
        ctx.signals.after_save(ctx, path, emit)


def after_loss(ctx: TrainContext, lost: distributed.ProcessLost, logger: TrainLogger) -> distributed.ProcessLost:
    """Another process is gone: rank 0 saves the LoRA and state of the last complete step on
    its own (no collective: the trained weights agree on every process after each optimizer
    step, and a step whose gradient average failed was not applied), so the run resumes. A
    sharded run has no whole copy to save: it names the last saved file and state instead."""
    step = ctx.position.global_step
    if not ctx.world.is_main or step == 0:
        return lost
    if ctx.sharded:
        folder = outputs.state_dir(ctx)
        saved = folder if folder.is_dir() else None
        last = (f"the last saved file is {ctx.last_saved}" + (f" and state {saved}" if saved else "")
                if ctx.last_saved else "nothing was saved yet")
        return distributed.ProcessLost(
            f"{lost}\n  the U-Net is sharded over the processes (FSDP), so step {step} cannot be gathered "
            f"without the lost one: {last}", ctx.last_saved, saved)
    lora = save_lora(ctx, outputs.step_name(ctx, step))
    state = save_state(ctx)
    logger.write(f"saved {lora} and state {state} at step {step}")
    return distributed.ProcessLost(f"{lost}\n  saved at step {step}: {lora} and state {state}", lora, state)
