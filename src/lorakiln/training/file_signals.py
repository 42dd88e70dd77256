"""Signals of every saved file — validation loss and drift — and the end-of-run recommendation.

At each saved LoRA (epoch and step files, and the final one; not the save a stop signal forces,
which is a resume point, not a candidate) the loop calls `after_save`: the validation loss of the
held-out images (val_loss.py, SimpleTuner's eval loss) and the drift score on the preservation
prompts (drift.py, after ai-toolkit's output preservation) are measured with the weights just
saved (the EMA weights when `ema_decay` is set, as the file holds them), printed, written to
TensorBoard (``signals/val_loss``, ``signals/drift``) and sent to the callbacks as a ``signals``
event. `summary` prints the table and the recommended file and strength (recommend.py).

Measuring must not change training, so the trainer's bit-exact resume holds: the RNGs are forked
(`torch.random.fork_rng`, as training/validation.py does for renders), every input comes from
private seeded generators, the network, U-Net and text encoders go to eval mode (no LoRA dropout)
and back, and every module's strength is restored. The rows are kept in
`<output_dir>/<output_name>-signals.json`, so a resumed run's table still lists the files saved
before the interruption.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorakiln.atomic import write_text_atomic
from lorakiln.training.drift import DriftProbe
from lorakiln.training.recommend import FileSignals, recommend, table_lines
from lorakiln.training.val_loss import ValidationLoss
from lorakiln.training.validation import evaluating

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext
    from lorakiln.training.progress import TrainLogger

Emit = Callable[..., None]


def signals_path(ctx: TrainContext) -> Path:
    return ctx.output_dir / f"{ctx.cfg.output.output_name}-signals.json"


class FileSignalsRecorder:
    """One run's signals: the fixed inputs, the rows so far, where they are printed and logged."""

    def __init__(self, ctx: TrainContext, logger: TrainLogger) -> None:
        self.logger = logger
        self.val = ValidationLoss(ctx.dataset.held_out)
        self.probe: DriftProbe | None = None
        self.rows: list[FileSignals] = []
        path = signals_path(ctx)
        if ctx.cfg.train.resume and path.is_file():  # a fresh run starts a fresh table
            step = ctx.position.global_step
            saved = json.loads(path.read_text(encoding="utf-8")).get("rows", [])
            self.rows = [r for r in map(FileSignals.from_json, saved) if r.step <= step]

    def measure(self, ctx: TrainContext) -> tuple[float | None, dict[float, float]]:
        """(validation loss, {strength: drift}) of the weights as they are, without side effects."""
        v = ctx.cfg.validation
        with evaluating(ctx, _cuda_devices(ctx)):
            loss = self.val.measure(ctx, v.signal_timesteps, v.validation_seed)
            if self.probe is None and not ctx.full:
                self.probe = DriftProbe(ctx)
                if self.probe.note:
                    self.logger.write(f"note: {self.probe.note}")
            drift = self.probe.measure(ctx) if self.probe is not None else {}
        return loss, drift

    def after_save(self, ctx: TrainContext, path: Path, emit: Emit) -> FileSignals:
        """Measure the file just saved at `path`; print, log and emit its row, and keep it."""
        step = ctx.position.global_step
        loss, drift = self.measure(ctx)
        row = FileSignals(path.name, step, loss, drift)
        self.rows = [r for r in self.rows if r.file != row.file] + [row]
        if not ctx.world.is_main:  # a sharded run's other processes measured along (sharding.py)
            return row
        write_text_atomic(signals_path(ctx), json.dumps({"rows": [r.to_json() for r in self.rows]}, indent=1))
        held = f"{len(self.val.items)} held-out" if self.val else "no held-out images"
        shown = f"{loss:.5f}" if loss is not None else "-"
        d1 = drift.get(1.0)
        self.logger.write(f"signals {row.file}: val loss {shown} ({held}), drift "
                          + (f"{d1:.4f} at strength 1" if d1 is not None else "-"))
        writer = self.logger.writer
        if writer is not None:
            if loss is not None:
                writer.add_scalar("signals/val_loss", loss, step)
            for s, value in drift.items():
                writer.add_scalar(f"signals/drift@{s:g}", value, step)
        emit("signals", file=str(path), step=step, val_loss=loss, drift=d1,
             drift_by_strength={f"{s:g}": value for s, value in drift.items()})
        return row

    def summary(self, ctx: TrainContext, emit: Emit) -> None:
        """Print the table and the recommendation; emit it as a ``recommended`` event."""
        if not ctx.world.is_main:
            return
        threshold = ctx.cfg.validation.drift_threshold
        pres = ctx.cfg.preservation
        rec = recommend(self.rows, threshold, pres.diff_output_preservation or pres.blank_prompt_preservation)
        for line in table_lines(self.rows, rec, threshold):
            self.logger.write(line)
        if rec is not None:
            emit("recommended", file=str(ctx.output_dir / rec.file), strength=rec.strength, rule=rec.rule,
                 reason=rec.reason)


def _cuda_devices(ctx: TrainContext) -> list[int]:
    """The CUDA device to fork too (nothing here draws from it, but an op might, one day)."""
    if ctx.device.type == "cuda":
        return [ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()]
    return []


def start(ctx: TrainContext, logger: TrainLogger) -> FileSignalsRecorder | None:
    """The recorder of this run, or None with `[validation] signals = false`."""
    return FileSignalsRecorder(ctx, logger) if ctx.cfg.validation.signals else None
