"""Full training state for exact resume, saved as a folder that appears atomically.

A state folder holds the adapter (`network.safetensors`), the optimizer, LR-schedule and
grad-scaler states (`optimizer.pt`, `schedule.pt`, read back with `weights_only=True`), every
RNG state (`rng.safetensors` + `state.json`; no pickles, so a state folder cannot run code) and
the loop position plus the resolved config (`state.json`). It is written to a temporary sibling and
renamed into place, so an interruption mid-save leaves the previous state intact.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lorakiln.errors import TrainingError

STATE_VERSION = 1


@dataclass
class LoopPosition:
    """Where the loop is: optimizer steps done, the epoch and the batch index within it."""

    global_step: int = 0
    epoch: int = 0  # 0-based epoch currently being trained
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    #: Output numbering already used, so a resumed run continues it.
    saved_epochs: list[int] = field(default_factory=list)


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


def save_state(
    folder: Path,
    *,
    network_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    position: LoopPosition,
    config: dict[str, Any],
) -> Path:
    """Write the state folder atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in network_state.items()},
                  str(tmp / "network.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "schedule.pt")
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        meta = {"version": STATE_VERSION, "position": asdict(position), "config": config, "rng": _rng_json()}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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


def load_state(folder: str | Path) -> LoadedState:
    """Read a state folder, with an error naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        old = folder.with_name(f".{folder.name}.old")
        hint = f" (an interrupted save left {old}; rename it to {folder.name})" if old.is_dir() else ""
        raise TrainingError(f"resume state {folder} does not exist{hint}; pass a folder written by "
                            "save_state, such as <output_dir>/<output_name>-state")
    needed = ["state.json", "network.safetensors", "optimizer.pt", "schedule.pt", "rng.safetensors"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise TrainingError(f"resume state {folder} is incomplete: missing {', '.join(missing)}")
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if meta.get("version") != STATE_VERSION:
        raise TrainingError(f"resume state {folder} has version {meta.get('version')}, "
                            f"this lorakiln reads version {STATE_VERSION}")
    sched = torch.load(folder / "schedule.pt", weights_only=True)
    return LoadedState(
        folder=folder,
        network_state=load_file(str(folder / "network.safetensors")),
        optimizer_state=torch.load(folder / "optimizer.pt", weights_only=True),
        schedule_state=sched["schedule"],
        scaler_state=sched["scaler"],
        rng_tensors=load_file(str(folder / "rng.safetensors")),
        rng_states=meta["rng"],
        position=LoopPosition(**meta["position"]),
        config=meta["config"],
    )


def restore_rng(state: LoadedState) -> None:
    """Put every RNG back where it was when the state was saved."""
    _set_rng_state(state.rng_tensors, state.rng_states)
