"""The numbers behind "total steps", printed before training starts.

Users budget runs as images × repeats × epochs ÷ batch size, but bucketing rounds each
bucket's last batch up separately, so the real count can be a little higher. Showing the
breakdown explains the difference instead of leaving people to guess why 1300 became 1310.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubsetSteps:
    """One folder's contribution to an epoch."""

    name: str
    images: int
    repeats: int

    @property
    def samples(self) -> int:
        return self.images * self.repeats


@dataclass(frozen=True)
class BucketSteps:
    """One bucket's samples per epoch and the batches they make (ceil division)."""

    bucket: tuple[int, int]
    samples: int
    batches: int


@dataclass(frozen=True)
class StepsBreakdown:
    """Everything needed to print and check the step count of a run."""

    subsets: tuple[SubsetSteps, ...]
    buckets: tuple[BucketSteps, ...]
    batch_size: int
    #: Prior preservation: class images paired into each batch. They add rows, not steps.
    num_class_images: int = 0

    @property
    def num_images(self) -> int:
        return sum(s.images for s in self.subsets)

    @property
    def samples_per_epoch(self) -> int:
        """Images × repeats, summed over folders (kohya `num_train_images`)."""
        return sum(s.samples for s in self.subsets)

    @property
    def batches_per_epoch(self) -> int:
        return sum(b.batches for b in self.buckets)

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps for `epochs` epochs (before gradient accumulation)."""
        return self.batches_per_epoch * epochs

    def format(self, epochs: int) -> str:
        """A short multi-line explanation, e.g. for the start of the training log."""
        lines = [f"images: {self.num_images} in {len(self.subsets)} folder(s)"]
        lines += [f"  {s.name}: {s.images} images x {s.repeats} repeats = {s.samples}" for s in self.subsets]
        lines.append(f"samples per epoch: {self.samples_per_epoch}, batch size {self.batch_size}")
        per_bucket = ", ".join(f"{b.bucket[0]}x{b.bucket[1]}: {b.samples} -> {b.batches}" for b in self.buckets)
        lines.append(f"batches per epoch: {self.batches_per_epoch} (per bucket, rounded up: {per_bucket})")
        naive = self.samples_per_epoch * epochs / self.batch_size
        line = (f"total steps = {self.batches_per_epoch} batches x {epochs} epochs = {self.total_steps(epochs)}"
                f" (images x repeats x epochs / batch size = {naive:g}")
        if self.total_steps(epochs) != naive:
            line += "; the difference is each bucket's last, partial batch"
        lines.append(line + ")")
        if self.num_class_images:
            lines.append(f"prior preservation: {self.num_class_images} class images; each batch also carries one "
                         "class sample per instance sample (in its bucket), so batches are twice as large "
                         "but the step count is unchanged")
        return "\n".join(lines)
