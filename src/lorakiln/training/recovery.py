"""After a kill: find the complete state resume needs, and clear what killed saves left behind.

A state is written to `.<name>-state.<random>.tmp/` and swapped in with two renames
(state.py): `<name>-state` → `.<name>-state.old`, then the temporary folder → `<name>-state`. A
kill between the two leaves no `<name>-state`, but both neighbours are complete, so resume falls
back to the newest complete one and says so, and the next training into that output puts it back
under its own name. A state counts as complete when every file is present and `state.json`, which
is written last, parses. Leftovers (temporary state folders, an `.old` no longer needed, the
temporary files of atomic writes) are removed at the next start, matching only this output's own
names: another output name in the same folder may be saving right now.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from lorakiln.errors import TrainingError

Log = Callable[[str], None] | None

#: Every file of a state folder; `state.json` is written last and marks it complete.
STATE_FILES = ("network.safetensors", "optimizer.pt", "schedule.pt", "rng.safetensors", "state.json")


def state_step(folder: Path) -> int | None:
    """The optimizer step a complete state folder was saved at; None if it is not complete."""
    if not all((folder / name).is_file() for name in STATE_FILES):
        return None
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        return int(meta["position"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def leftover_states(folder: Path) -> list[Path]:
    """Folders beside `folder` that its saves create: `.<name>.old` and `.<name>.<random>[.tmp]`."""
    prefix = f".{folder.name}."
    try:
        return sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError:
        return []


def newest_complete(candidates: list[Path]) -> Path | None:
    """The complete state with the most steps (the newer of two equal ones by modification time)."""
    steps = [(step, p.stat().st_mtime, p) for p in candidates if (step := state_step(p)) is not None]
    return max(steps)[2] if steps else None


def find_state(folder: str | Path) -> tuple[Path, str | None]:
    """(the state to load, a note when it is not `folder` itself). `folder` is used when complete;
    otherwise the newest complete state an interrupted save left beside it."""
    folder = Path(folder)
    if state_step(folder) is not None:
        return folder, None
    fallback = newest_complete(leftover_states(folder))
    if fallback is not None:
        what = "is missing" if not folder.exists() else "is incomplete"
        return fallback, (f"{folder} {what} (a save was interrupted); resuming from the complete state "
                          f"{fallback.name} beside it (step {state_step(fallback)})")
    if not folder.is_dir():
        what = "is a file, not a state folder" if folder.exists() else "does not exist"
        raise TrainingError(f"resume state {folder} {what}; pass a folder written with "
                            "output.save_state = true, such as <output_dir>/<output_name>-state"
                            + _others(folder))
    missing = [n for n in STATE_FILES if not (folder / n).is_file()]
    if missing:
        raise TrainingError(f"resume state {folder} is incomplete (missing {', '.join(missing)})" + _others(folder))
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        int(meta["position"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(folder, "state.json", err) from None
    return folder, None  # completed between the two looks


def _temp_file_pattern(name: str) -> re.Pattern[str]:
    """Temporary files of `atomic.atomic_path` (`.<file>.<random>.tmp`) for this output's files:
    LoRAs (final, epoch, step), pivotal `_emb` files, the resolved config and the grids."""
    files = r"(?:-\d{6}|-step\d{8})?(?:_emb)?(?:\.safetensors|_config\.toml|_epochs_x_strengths\.png|_epochs_x_prompts\.png)"
    return re.compile(rf"^\.{re.escape(name)}{files}\.[A-Za-z0-9_]+\.tmp$")


def clean_leftovers(output_dir: Path, output_name: str, log: Log = print) -> list[str]:
    """At the start of a run (under the output lock): restore `<name>-state` from an interrupted
    swap when it is missing, then remove this output's leftovers. Returns what was removed."""
    state = output_dir / f"{output_name}-state"
    leftovers = leftover_states(state)
    if not state.exists() and (best := newest_complete(leftovers)) is not None:
        os.rename(best, state)
        leftovers.remove(best)
        if log:
            log(f"notice: an interrupted save left no {state.name}; restored it from {best.name} "
                f"(step {state_step(state)})")
    removed: list[str] = []
    if leftovers and state_step(state) is None and newest_complete(leftovers) is not None:
        if log:  # never delete the only complete state; the user decides which to keep
            log(f"warning: {state} is incomplete and complete states lie beside it "
                f"({', '.join(p.name for p in leftovers)}); nothing was removed")
        return removed
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    pattern = _temp_file_pattern(output_name)
    for path in output_dir.iterdir():
        if pattern.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed and log:
        log(f"removed {len(removed)} leftover(s) of interrupted saves in {output_dir}: {', '.join(sorted(removed))}")
    return removed


def _others(folder: Path) -> str:
    """What else the output folder offers when a state cannot be used."""
    parent = folder.parent
    if not parent.is_dir():
        return ""
    states = sorted(p for p in parent.iterdir() if p != folder and state_step(p) is not None)
    name = folder.name.removesuffix("-state")
    loras = sorted((p for p in parent.glob(f"{glob.escape(name)}*.safetensors") if not p.stem.endswith("_emb")),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    parts = []
    if states:
        parts.append("other complete states here: " + ", ".join(f"{p} (step {state_step(p)})" for p in states))
    if loras:
        parts.append(f"LoRA files, newest first: {', '.join(p.name for p in loras[:4])} in {parent} — to "
                     f"continue from one (not an exact resume), set network.network_weights = \"{loras[0]}\" "
                     "and drop train.resume")
    return ("\n  " + "\n  ".join(parts)) if parts else f"\n  no other state or LoRA file of {name} in {parent}"


def damaged(folder: Path, name: str, err: BaseException) -> TrainingError:
    """The error for a state file that exists but cannot be read."""
    return TrainingError(f"resume state {folder} is damaged: {name} cannot be read ({_reason(err)}). "
                         "This state cannot be resumed; it was changed or cut short after lorakiln wrote it"
                         + _others(folder))


def _reason(err: BaseException) -> str:
    """One short line about why a file did not load. PyTorch's own text for a refused pickle
    advises `weights_only=False`, which would run whatever code the file holds, so it is
    never shown."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "weights_only" in str(err) or "Weights only" in str(err):
        return "it holds objects other than tensors and plain values, which lorakiln never writes there"
    return text if len(text) <= 160 else text[:157] + "…"
