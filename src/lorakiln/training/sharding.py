"""Sharded full fine-tuning: FSDP over the U-Net of a `train.mode = "full"` run on many processes.

A full fine-tune keeps, for every U-Net weight, an fp32 master copy, its gradient and AdamW's two
moments: 16 bytes per weight, about 41 GB for SDXL's 2.6 billion before any activation.
Data-parallel processes each hold all of it. With `train.fsdp` (or `accelerate launch` with an
FSDP config, which sets ``ACCELERATE_USE_FSDP``) every U-Net block becomes an FSDP unit
(PyTorch's ``fully_shard``, FSDP2; Zhao et al. 2023, "PyTorch FSDP"; the ZeRO-3 stage of
Rajbhandari et al. 2020): each process keeps 1/N of every weight, gradient and moment, and a
block's whole weights exist only while it runs (gathered before its forward and its backward,
freed after). Gradients are reduce-scattered (averaged) in every backward, accumulation
micro-steps included: FSDP's no-sync mode would hold whole unsharded gradients, the very memory
this mode exists to save.

The sharded U-Net answers only when every process calls it, which changes the rank-0-only parts:

* renders and the per-file validation loss run on every process in step (rank 0 alone writes
  them), so a stop signal that arrives during a render takes effect when the render ends;
* a save gathers the whole weights (and, for a state, the optimizer's moments) onto rank 0's CPU
  (`torch.distributed.checkpoint.state_dict`), every process taking part;
* a state holds whole weights and an optimizer state keyed by parameter name, so it resumes on
  any number of processes, sharded or not;
* a lost process leaves nothing to gather: the run ends with the last saved file and state.

The text encoders, when trained, stay whole on every process, their gradients averaged as in a
LoRA run (distributed.average_gradients skips the sharded weights).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lorakiln.config.schema import RunConfig
from lorakiln.errors import ConfigError
from lorakiln.training.distributed import World, collective


def requested(cfg: RunConfig, env: Mapping[str, str] | None = None) -> bool:
    """`train.fsdp`, or an `accelerate launch` whose config chose FSDP (``ACCELERATE_USE_FSDP``)."""
    env = os.environ if env is None else env
    return cfg.train.fsdp or env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def wanted(cfg: RunConfig, world: World, log: Callable[[str], None] | None,
           env: Mapping[str, str] | None = None) -> bool:
    """Whether this run shards its U-Net; refuses, before the model loads, what cannot run sharded."""
    if not requested(cfg, env):
        return False
    if cfg.train.mode != "full":  # only accelerate's FSDP config gets here: train.fsdp is a config error
        if log:
            log("note: accelerate's config asks for FSDP, which lorakiln uses for full fine-tunes; this "
                "LoRA run is data-parallel (every process holds the frozen model and the small LoRA)")
        return False
    if not world.active:
        if log:
            log("note: train.fsdp on one process: nothing to shard, the run trains as usual")
        return False
    from lorakiln.training.optimizers import works_on_shards

    t = cfg.train
    if not works_on_shards(t.optimizer_type):
        raise ConfigError(f"train.optimizer_type = {t.optimizer_type!r} with FSDP (train.fsdp or accelerate's "
                          "FSDP config): the sharded U-Net trains with torch's optimizers only; use "
                          "optimizer_type = 'AdamW' (or 'SGD'), or run without FSDP")
    if t.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision = 'fp16' with FSDP: fp16 loss scaling does not see the "
                          "sharded gradients whole; use mixed_precision = 'bf16' (or 'no')")
    return True


def is_sharded(tensor: torch.Tensor) -> bool:
    """A parameter (or tensor) FSDP holds as a DTensor: this process has only its slice."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def shard(unet: nn.Module, world: World, device: torch.device) -> str:
    """Make each down/mid/up block of `unet` an FSDP unit and the U-Net the root unit (its
    remaining layers: the input and output convolutions, the time and class embeddings), over
    all processes; returns the line that says what each process now holds."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    total = sum(p.numel() for p in unet.parameters())
    mesh = init_device_mesh(device.type, (world.size,))
    blocks = [*getattr(unet, "down_blocks", []), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", [])]
    with collective("sharding the U-Net"):
        for block in blocks:
            if block is not None:
                fully_shard(block, mesh=mesh)
        fully_shard(unet, mesh=mesh)
    held = sum(p.to_local().numel() for p in unet.parameters() if is_sharded(p))
    return (f"FSDP: the U-Net's {total / 1e6:.1f} M weights are sharded over {world.size} processes "
            f"({held / 1e6:.1f} M here, with their gradients and optimizer state); "
            f"{len([b for b in blocks if b is not None])} blocks are gathered one at a time")


def reshard(module: nn.Module) -> None:
    """Free the whole weights FSDP keeps after a forward without a backward (a render, the
    validation loss: the U-Net's own top-level layers stay gathered, as FSDP keeps the root unit
    gathered for the backward that usually follows). No communication. Without this, weights
    copied into the shards meanwhile (the EMA swapped in and out) would not be seen: the next
    forward would reuse the stale gathered copy."""
    from torch.distributed.fsdp import FSDPModule

    for part in module.modules():
        if isinstance(part, FSDPModule):
            part.reshard()


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over sharded and whole parameters together: torch's own
    refuses a list that mixes them, so the two norms are taken apart (the sharded one over all
    processes) and combined."""
    with_grad = [p for p in params if p.grad is not None]
    sharded = [p for p in with_grad if is_sharded(p)]
    whole = [p for p in with_grad if not is_sharded(p)]
    norms = []
    if sharded:
        with collective("the gradient norm"):
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor())
    if whole:
        norm = torch.nn.utils.get_total_norm([p.grad for p in whole])
        norms.append(norm.to(norms[0].device) if norms else norm)
    if not norms:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(norms))
    for part in (sharded, whole):  # clip_grads_with_norm_ scales each parameter's .grad
        if part:
            torch.nn.utils.clip_grads_with_norm_(part, max_norm, total)
    return total


def _options(**extra: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of `module` on rank 0's CPU ({} elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with collective("saving (gathering the sharded weights)"):
        return get_model_state_dict(module, options=_options(cpu_offload=True))


def gathered_unet(unet: nn.Module) -> nn.Module | None:
    """A whole, plain copy of the sharded `unet` on rank 0's CPU, for the single-file and diffusers
    writers (None on the other processes); every process must call it."""
    from torch.distributed.fsdp import FSDPModule

    state = full_state(unet)
    if not state:
        return None
    plain = next(c for c in type(unet).__mro__ if not issubclass(c, FSDPModule))  # fully_shard's subclass
    with torch.device("meta"):
        copy = plain.from_config(unet.config)
    copy.load_state_dict(state, assign=True)
    return copy.eval()


def full_optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state with whole moments, keyed by parameter name, on rank 0's CPU ({} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    with collective("saving (gathering the optimizer state)"):
        return get_optimizer_state_dict(network, optimizer, options=_options(cpu_offload=True))


def load_state(network: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Whole weights (every process read the same state) into the sharded `network`: each process
    keeps its slice."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(network, dict(state), options=_options())


def named_state(state: Mapping[str, Any]) -> bool:
    """True for an optimizer state keyed by parameter name (saved by a sharded run)."""
    groups = state.get("param_groups") or [{}]
    return any(isinstance(p, str) for g in groups for p in g.get("params", []))


def _names(network: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names of `optimizer`'s parameters, in its order (torch's integer ids)."""
    by_id = {id(p): name for name, p in network.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def by_name(state: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """A torch optimizer state (integer ids) keyed by parameter name instead."""
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def by_index(state: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name as torch's `Optimizer.load_state_dict` wants it."""
    index = {name: i for i, name in enumerate(names)}
    missing = [n for g in state["param_groups"] for n in g["params"] if n not in index]
    if missing:
        raise ValueError(f"the saved optimizer state names parameters this model lacks: {missing[:3]}")
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def load_optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any],
                         sharded: bool) -> None:
    """A saved optimizer state (either keying) into this run's optimizer, sharded or not."""
    names = _names(network, optimizer)
    if not sharded:
        optimizer.load_state_dict(by_index(state, names) if named_state(state) else dict(state))
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    named = dict(state) if named_state(state) else by_name(state, names)
    set_optimizer_state_dict(network, optimizer, named, options=_options())


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` whole (a collective for a sharded one, on every process)."""
    if not is_sharded(tensor):
        return tensor
    with collective("saving (gathering the EMA weights)"):
        return tensor.full_tensor()


def slice_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's slice of `full`, placed as the sharded `like` (no communication: every
    process holds `full`); `full` itself when `like` is whole."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)
