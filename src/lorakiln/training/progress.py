"""Console progress bar and TensorBoard logging for the training loop.

Loss values reach the host only every `log_every` steps (one device sync per log, not per
step: avoid host syncs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lorakiln.training.render_plan import EtaClock, format_seconds


class TrainLogger:
    """Owns the tqdm bar and the TensorBoard writer of one run."""

    def __init__(self, total_steps: int, initial_step: int, logging_dir: Path | None, enabled: bool = True,
                 eta: EtaClock | None = None, quiet: bool = False):
        # With a render plan the bar shows `left=` (steps and renders, render_plan.py) instead of
        # tqdm's steps-only estimate, which reads "0:00" while the final grids still take minutes.
        fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]" if eta is not None else None
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="steps", unit="step",
                        dynamic_ncols=True, disable=not enabled, bar_format=fmt)
        self.eta = eta
        self.quiet = quiet  # a process other than rank 0 of a multi-process run prints nothing
        #: The latest time-left estimate (seconds, steps and renders) and the images still to render.
        self.time_left: float | None = None
        self.renders_left = 0
        self.postfix: dict[str, Any] = {}
        self.writer = None
        if logging_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            logging_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(logging_dir))
        self.loss_sum = 0.0
        self.loss_count = 0
        self.started = time.perf_counter()

    def step(self, step: int, epoch: int, loss: float | None, lrs: dict[str, float],
             seconds: float | None = None) -> None:
        """Advance the bar by one optimizer step (that took `seconds`); log scalars when a loss
        value is given."""
        if self.eta is not None and seconds is not None:
            self.eta.step_done(seconds)
            left, images = self.eta.remaining(step, self.bar.total)
            self.time_left, self.renders_left = left, images
            if left is not None:
                self.postfix["left"] = format_seconds(left) + (f" incl. {images} renders" if images else "")
        if loss is None:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(1)
            return
        self.loss_sum += loss
        self.loss_count += 1
        avg = self.loss_sum / self.loss_count
        self.postfix.update(epoch=epoch + 1, loss=f"{loss:.4f}", avg=f"{avg:.4f}")
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)
        if self.writer is not None:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", avg, step)
            self.writer.add_scalar("epoch", epoch + 1, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)

    def epoch_end(self, epoch: int, step: int, epoch_loss: float | None) -> None:
        if self.writer is not None and epoch_loss is not None:
            self.writer.add_scalar("loss/epoch", epoch_loss, epoch + 1)

    def images(self, tag: str, batch: Any, step: int) -> None:
        """Log `[N, H, W, 3]` uint8 images (validation renders)."""
        if self.writer is not None:
            self.writer.add_images(tag, batch, step, dataformats="NHWC")

    def rendered(self, work: float, seconds: float) -> None:
        """Renders of `work` pixel-steps took `seconds` (the ETA's render rate)."""
        if self.eta is not None:
            self.eta.render_done(work, seconds)

    def sub_bar(self, total: int, desc: str) -> tqdm:
        """A second bar under the steps bar, for work between steps (sample renders), so the run
        never looks frozen; a context manager that removes itself when done."""
        return tqdm(total=total, desc=desc, unit="img", leave=False, position=1, dynamic_ncols=True,
                    disable=self.bar.disable)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if not self.quiet:
            self.bar.write(text)

    def close(self) -> dict[str, Any]:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        return {"seconds": time.perf_counter() - self.started}
