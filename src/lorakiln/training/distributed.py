"""One run on many processes: which process this is, and the few collectives a LoRA run needs.

A run started by ``accelerate launch``, ``torchrun`` or ``lorakiln train --num-processes N``
finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in its
environment, set by the launcher; a plain ``lorakiln train`` finds none and is one process, on
exactly the single-process path (no process group, no collective, no extra copy).

What many processes mean here (the README's "Many GPUs and machines"):

* **Data**: every optimizer step takes one *global* batch of ``train_batch_size × processes``
  samples from one bucket (the data layer builds the epoch with that batch size, so buckets and
  the per-epoch sample count are exactly the single-process ones), and each process takes its
  contiguous slice (`shard`). So 2 processes × batch 1 see what 1 process × batch 2 sees.
* **Noise and timesteps** are drawn for the whole global batch from the step's seed on every
  process, and each process keeps its rows: different per process, deterministic, and the same
  draws a single process with the global batch would make.
* **Gradients** are averaged once per optimizer step, after the last accumulation micro-step
  (`average_gradients`: one all-reduce of all trained gradients flattened into one buffer). This
  is what DDP does with ``no_sync()`` on the accumulation micro-steps; DDP itself needs the
  trained parameters to belong to the module whose ``forward`` runs, and lorakiln's adapters are
  forward hooks on the frozen base layers, held by a separate network module. Each process
  weights its loss by its share of the global batch, so an uneven last batch of a bucket
  still averages to the global batch's mean.
* **Only rank 0 writes**: LoRAs, states, samples, TensorBoard, the events file and the console
  progress; the other processes stay quiet.
* **A lost process stops the run, with a state**: collectives time out
  (``LORAKILN_DIST_TIMEOUT`` seconds, 1800 by default) and fail at once when a peer's
  connection closes; either becomes `ProcessLost`. The trained weights are the same on every
  process after each optimizer step, so rank 0 alone saves the LoRA and state of the last
  complete step, and the run ends with a message and the resume command instead of a hang.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from lorakiln.errors import TrainingError

T = TypeVar("T")

#: Seconds a collective may wait for the other processes (renders on rank 0 included).
DEFAULT_TIMEOUT_S = 1800


class ProcessLost(TrainingError):
    """Another process of the run died or stopped answering within the collective timeout.
    `lora`/`state` are what rank 0 saved at the last complete step (None elsewhere, or when
    nothing was trained yet)."""

    def __init__(self, message: str, lora: Path | None = None, state: Path | None = None) -> None:
        super().__init__(message)
        self.lora, self.state = lora, state


def timeout_s() -> float:
    """How long a collective waits for the other processes (``LORAKILN_DIST_TIMEOUT``)."""
    return float(os.environ.get("LORAKILN_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


#: Words in a backend's error that mean a peer is gone (gloo's "Connection closed by peer", NCCL's
#: and the store's timeouts), for the errors raised inside FSDP's own collectives (`collective(narrow=True)`).
_LOST_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")


@contextlib.contextmanager
def collective(what: str, *, narrow: bool = False) -> Iterator[None]:
    """Turn a failed collective (gloo/NCCL: a peer's connection closed, or the timeout passed)
    into `ProcessLost`, naming what the run was doing and what to do. Out of memory stays itself.
    `narrow`: for code that also does other work (the sharded U-Net's forward and backward, whose
    collectives FSDP runs), only errors that name the backend or a lost connection are converted."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:  # torch.distributed.DistError and the backends' errors are RuntimeErrors
        text = str(err).strip()
        if narrow and not (isinstance(err, torch.distributed.DistError)
                           or any(w in text.lower() for w in _LOST_WORDS)):
            raise
        detail = text.splitlines()[0][:300] if text else type(err).__name__
        raise ProcessLost(
            f"another process of this run stopped answering during {what}: it died (out of memory, "
            f"killed) or took longer than LORAKILN_DIST_TIMEOUT = {timeout_s():g} s (torch: {detail}). "
            "Its own error, if it printed one, is above; raise LORAKILN_DIST_TIMEOUT if a process "
            "is only slow (a long render on process 0)") from err


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and talks to the user."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The launcher's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; one process when they are absent."""
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={size} from the launcher do not fit together")
    return World(rank, size, local)


def device_for(world: World) -> torch.device:
    """This process's device: its own GPU (``cuda:LOCAL_RANK``) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs); nothing for a single process."""
    import torch.distributed as dist

    if not world.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                            world_size=world.size, timeout=timeout)


def shutdown(world: World) -> None:
    import torch.distributed as dist

    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], world: World) -> tuple[list[T], int]:
    """This process's contiguous slice of one global batch and its offset in it. Sizes differ by
    at most one (the first ``len % size`` processes take one more); a process can get none when
    a bucket's last batch has fewer samples than processes (`loss_share` is then 0)."""
    base, extra = divmod(len(items), world.size)
    start = world.rank * base + min(world.rank, extra)
    count = base + (1 if world.rank < extra else 0)
    return list(items[start:start + count]), start


def loss_share(rows: int, total_rows: int, world: World) -> float:
    """The factor on this process's mean loss so that the average over processes is the mean
    over the global batch: ``rows × processes / total_rows`` (1 when the batch splits evenly)."""
    return rows * world.size / total_rows if total_rows else 0.0


def average_gradients(params: Sequence[torch.Tensor], world: World) -> None:
    """Average the gradients of `params` over all processes, in one all-reduce. Parameters
    without a gradient stay without one (the optimizer skips them, as in a single process): every
    process runs the same graph, a process without samples a zero-weighted one, so the set agrees."""
    if not world.active:
        return
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    # FSDP's sharded weights (sharding.py) were averaged by their own reduce-scatter in backward
    with_grad = [p for p in params if p.grad is not None and not isinstance(p, DTensor)]
    if not with_grad:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in with_grad])
    with collective("the gradient average"):
        dist.all_reduce(flat)
    flat /= world.size
    at = 0
    for p in with_grad:
        n = p.grad.numel()
        p.grad.copy_(flat[at:at + n].view_as(p.grad))
        at += n


def mean_over(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar over all processes (the logged loss, and its NaN check, agree)."""
    if not world.active:
        return value
    import torch.distributed as dist

    out = value.detach().clone().float()
    with collective("the loss average"):
        dist.all_reduce(out)
    return out / world.size


def any_process(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process when `flag` is true on any (a stop signal received by one process)."""
    if not world.active:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    with collective("the stop-signal check"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def broadcast_parameters(params: Sequence[torch.Tensor], world: World) -> None:
    """Rank 0's values of `params` on every process (the network's seeded init already agrees;
    this makes it so whatever the init)."""
    if not world.active:
        return
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    with torch.no_grad(), collective("the start (sharing process 0's initial weights)"):
        for p in params:
            if not isinstance(p, DTensor):  # a sharded weight's slices come from the same file on every process
                dist.broadcast(p.data, src=0)


def gather_latents(cache: Any, world: World) -> int:
    """Every process's newly cached latents to every process (`LatentCache` keeps them by content
    key), so the dataset is encoded once across the run instead of once per process; returns how
    many latents this process now holds. With a disk cache the files are shared as well, but the
    in-memory copies still travel here: no process has to read the others' files."""
    import torch.distributed as dist

    everyone: list[dict[str, torch.Tensor] | None] = [None] * world.size
    with collective("latent caching (sharing the encoded latents)"):
        dist.all_gather_object(everyone, cache.held())
    for part in everyone:
        cache.adopt(part or {})
    return len(cache.held())


def barrier(world: World, what: str = "a wait for process 0") -> None:
    if world.active:
        import torch.distributed as dist

        with collective(what):
            dist.barrier()
