"""Full training state for exact resume, saved as a folder that appears atomically.

A state folder holds the adapter (`network.safetensors`), the optimizer, LR-schedule and
grad-scaler states (`optimizer.pt`, `schedule.pt`, read back with `weights_only=True`), every
RNG state (`rng.safetensors` + `state.json`; no pickles, so a state folder cannot run code) and
the loop position plus the resolved config (`state.json`). It is written to a temporary sibling
`.<name>-state.<random>.tmp/`, every file fsynced and `state.json` last (it marks the folder
complete), then swapped in by two renames. A folder cannot be renamed over a non-empty one in one
portable step, so a kill between the renames leaves no `<name>-state` for a moment; resume then
uses the newest complete neighbour (recovery.py), so a complete state is always reachable.

`restore_into` puts a loaded state into a freshly prepared run (`train.resume`): adapter,
pivotal embeddings, EMA, optimizer, schedule, scaler, RNGs and loop position.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lorakiln.atomic import temp_folder_beside
from lorakiln.errors import LorakilnError, TrainingError
from lorakiln.training import recovery, sharding

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext

STATE_VERSION = 1


@dataclass
class LoopPosition:
    """Where the loop is: optimizer steps done, the epoch and the batch index within it."""

    global_step: int = 0
    epoch: int = 0  # 0-based epoch currently being trained
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    #: Output numbering already used, so a resumed run continues it.
    saved_epochs: list[int] = field(default_factory=list)
    #: Processes of the run that saved this position (distributed.py) and the samples of `epoch`
    #: its `batch_in_epoch` global batches held: a resume on another process count maps the
    #: position onto its own batches by samples consumed.
    processes: int = 1
    samples_in_epoch: int = 0


def _rng_tensors() -> dict[str, torch.Tensor]:
    """torch CPU/CUDA generator states as uint8 tensors (stored as safetensors, not pickles)."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return out


def _rng_json() -> dict[str, Any]:
    """Python and NumPy generator states as JSON (both are tuples of ints)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a power cut after the rename cannot leave it empty
    (ext4 and XFS may otherwise commit the rename before the data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows; its renames are durable already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: The swap's steps, named so a test can fail each one as a kill would (test_state_swap.py).
_rename: Callable[[Path, Path], None] = os.rename
_remove_tree: Callable[[Path], None] = shutil.rmtree


def _write_files(folder: Path, tmp: Path, network_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                 schedule: Any, scaler: Any, meta: dict[str, Any]) -> None:
    """Write every state file of `folder` into `tmp`, `state.json` last, each flushed to disk."""
    writers: list[tuple[str, Callable[[Path], None]]] = [
        ("network.safetensors", lambda p: save_file(
            {k: v.detach().float().cpu().contiguous() for k, v in network_state.items()}, str(p))),
        ("optimizer.pt", lambda p: torch.save(optimizer_state, p)),
        ("schedule.pt", lambda p: torch.save({"schedule": schedule.state_dict(),
                                              "scaler": scaler.state_dict() if scaler is not None else None}, p)),
        ("rng.safetensors", lambda p: save_file(_rng_tensors(), str(p))),
        ("state.json", lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8")),
    ]
    for name, write in writers:
        try:
            write(tmp / name)
        except Exception as err:
            raise StateWriteError(folder, name, err) from err
        _fsync(tmp / name)
    _fsync(tmp)


class StateWriteError(Exception):
    """A state file could not be written (disk full, …); the previous state is untouched."""

    def __init__(self, folder: Path, name: str, cause: BaseException) -> None:
        super().__init__(f"{folder / name}: {cause}")
        self.folder, self.name, self.cause = folder, name, cause


def save_state(
    folder: Path,
    *,
    network_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    schedule: Any,
    scaler: Any,
    position: LoopPosition,
    config: dict[str, Any],
) -> Path:
    """Write the state folder: a complete temporary folder first, then the two-rename swap."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder_beside(folder, suffix=".tmp")
    try:
        meta = {"version": STATE_VERSION, "position": asdict(position), "config": config, "rng": _rng_json()}
        _write_files(folder, tmp, network_state, optimizer_state, schedule, scaler, meta)
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            _remove_tree(old)
        if folder.exists():
            _rename(folder, old)
        _rename(tmp, folder)
        _fsync(folder.parent)
        if old.exists():
            _remove_tree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass
class LoadedState:
    """What `load_state` read; apply it with `restore_into`."""

    folder: Path
    network_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    schedule_state: dict[str, Any]
    scaler_state: dict[str, Any] | None
    rng_tensors: dict[str, torch.Tensor]
    rng_states: dict[str, Any]
    position: LoopPosition
    config: dict[str, Any]


def _read(folder: Path, name: str, reader: Callable[[Path], Any]) -> Any:
    """Read one state file; a damaged one becomes an error naming it (recovery.damaged)."""
    try:
        return reader(folder / name)
    except Exception as err:
        raise recovery.damaged(folder, name, err) from None


def _need(folder: Path, name: str, value: Any, *keys: str) -> None:
    """A file that loaded but lacks a key is as damaged as one that does not load."""
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
        raise recovery.damaged(folder, name, KeyError(f"no {', '.join(missing)}"))


def load_state(folder: str | Path) -> LoadedState:
    """Read a state folder (or, after an interrupted save, the complete state beside it), with an
    error naming any file that is missing or damaged. Pickled files load with `weights_only=True`:
    tensors and plain values only, never code (PyTorch's torch.load documentation)."""
    folder, _note = recovery.find_state(folder)
    meta = _read(folder, "state.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    _need(folder, "state.json", meta, "version", "position", "config", "rng")
    if meta["version"] != STATE_VERSION:
        raise TrainingError(f"resume state {folder} has version {meta['version']}, "
                            f"this lorakiln reads version {STATE_VERSION}")
    sched = _read(folder, "schedule.pt", lambda p: torch.load(p, weights_only=True))
    _need(folder, "schedule.pt", sched, "schedule", "scaler")
    try:
        position = LoopPosition(**meta["position"])
    except TypeError as err:
        raise recovery.damaged(folder, "state.json", err) from None
    return LoadedState(
        folder=folder,
        network_state=_read(folder, "network.safetensors", lambda p: load_file(str(p))),
        optimizer_state=_read(folder, "optimizer.pt", lambda p: torch.load(p, weights_only=True)),
        schedule_state=sched["schedule"],
        scaler_state=sched["scaler"],
        rng_tensors=_read(folder, "rng.safetensors", lambda p: load_file(str(p))),
        rng_states=meta["rng"],
        position=position,
        config=meta["config"],
    )


def restore_rng(state: LoadedState) -> None:
    """Put every RNG back where it was when the state was saved."""
    try:
        _set_rng_state(state.rng_tensors, state.rng_states)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise recovery.damaged(state.folder, "rng.safetensors / state.json (generator states)", err) from None


def restore_into(ctx: TrainContext, log: Callable[[str], None] | None) -> None:
    """Restore adapter, optimizer, schedule, scaler, RNGs and loop position from the state folder
    `train.resume` names, and say which settings differ from the saved run."""
    state = load_state(ctx.cfg.train.resume or "")
    pivotal_state = {k: v for k, v in state.network_state.items() if k.startswith("pivotal.")}
    ema_state = {k: v for k, v in state.network_state.items() if k.startswith("ema.")}
    weights = {k: v for k, v in state.network_state.items() if k not in pivotal_state and k not in ema_state}
    if ctx.sharded:  # whole weights into each process's slices (sharding.py)
        sharding.load_state(ctx.network, weights)
    else:
        ctx.network.load_kohya_state_dict(weights)
    if ctx.pivotal is not None:
        ctx.pivotal.load_state_dict(pivotal_state)
    if ctx.ema is not None:
        if not ema_state:
            raise LorakilnError(f"{state.folder} was saved without train.ema_decay; resume with the same setting")
        ctx.ema.load_state_dict(ema_state)
    if ctx.sharded or sharding.named_state(state.optimizer_state):  # a sharded run's state, or for one
        try:
            sharding.load_optimizer_state(ctx.network, ctx.optimizer, state.optimizer_state, ctx.sharded)
        except (KeyError, ValueError, RuntimeError) as err:
            raise LorakilnError(f"{state.folder}/optimizer.pt does not fit this run's optimizer ({err}); "
                                "resume with the model, train.mode and optimizer_type it was saved with") from None
    else:
        ctx.optimizer.load_state_dict(state.optimizer_state)
    ctx.schedule.load_state_dict(state.schedule_state)
    if state.scaler_state:
        ctx.scaler.load_state_dict(state.scaler_state)
    restore_rng(state)
    ctx.position = state.position
    regrouped = _onto_processes(ctx, state.position)
    changed = changed_keys(state.config, ctx.cfg.model_dump(mode="json"))
    if log:
        log(f"resumed from {state.folder} at step {state.position.global_step} "
            f"(epoch {state.position.epoch + 1}, batch {state.position.batch_in_epoch})")
        if regrouped:
            log(regrouped)
        if changed:
            log("warning: these settings differ from the saved run, so the result will not match an "
                "uninterrupted run exactly: " + ", ".join(changed))


def _onto_processes(ctx: TrainContext, position: LoopPosition) -> str | None:
    """Map a position saved by a run on another number of processes onto this run's batches.

    The global batch (`train_batch_size × processes`) changed, so this epoch's batches are grouped
    differently: the run continues at the first batch after the samples already consumed, with the
    same global step and so the same point of the LR schedule. The data order from there differs
    from an uninterrupted run's; the returned line says so (None when nothing changed)."""
    world = ctx.world.size
    saved = position.processes
    if saved == world:
        return None
    consumed, seen, index = position.samples_in_epoch, 0, 0
    batches = ctx.data.epoch_batches(position.epoch)
    while index < len(batches) and seen + len(batches[index]) <= consumed:
        seen += len(batches[index])
        index += 1
    position.batch_in_epoch, position.processes = index, world
    return (f"the state was saved by a run on {saved} process(es), this run has {world}: the global batch is "
            f"now {ctx.cfg.train.train_batch_size * world} samples (was {ctx.cfg.train.train_batch_size * saved}), "
            f"so the data order from here differs from an uninterrupted run; continuing at step "
            f"{position.global_step} after {seen} of the epoch's samples, with {ctx.plan.total_steps} steps in all")


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ between a saved run and this one, ignoring what a
    resume is expected to change (the resume path, the run length, the outputs)."""
    ignore = {"train.resume", "train.max_train_epochs", "train.max_train_steps", "output"}
    out = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if dotted in ignore or prefix.rstrip(".") in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, dotted + ".")
        elif a != b:
            out.append(dotted)
    return out
