"""`lorakiln train --verbose`: every process speaks, and each micro-batch says what it trained.

A multi-process run prints from rank 0 alone (training/distributed.py); with `--verbose` the
other processes print too, each line starting ``[process R]``, and every micro-batch prints its
step, bucket and images — how the data was split between processes, read off the console.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def prefixed(rank: int) -> Callable[[str], None]:
    """A log that says which process speaks."""

    def log(text: str) -> None:
        # One write per call, newline included: the processes share the terminal (or pipe), and a
        # write this small is atomic there, so lines from two processes never run together.
        print("".join(f"[process {rank}] {line}\n" for line in str(text).splitlines()), end="", flush=True)

    return log


def batch_line(batch: Any, step: int, epoch: int, micro: int, *, empty: bool) -> str:
    """One micro-batch: the step, the bucket and this process's images (what a user checks when
    two processes must share buckets and see each image once); `empty` is a process without a
    sample in this batch, which runs a zero-weighted stand-in."""
    w, h = batch.bucket
    images = "none (a zero-weighted stand-in)" if empty else ", ".join(str(p) for p in batch.paths[:batch.num_instance])
    return f"step {step + 1} (epoch {epoch + 1}, micro-batch {micro + 1}): bucket {w}x{h}: {images}"
