"""The one rule every writer obeys: never write over one of its own inputs.

`lorakiln lora convert a.safetensors a.safetensors --force` must not destroy `a.safetensors`,
whatever the flags; neither may a UI tool, a merge, a resize or a dataset edit. Paths are
compared after resolving symlinks, `..` and `~`, and by file identity (`os.path.samefile`:
device and inode), so another spelling, a symlink or a hard link of the input is caught too.
A folder output (a diffusers folder, a dataset copy) is refused when an input lies inside it,
because writing the folder may replace or delete that input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lorakiln.errors import LorakilnError

PathLike = str | os.PathLike[str]


class OverwriteInputError(LorakilnError):
    """An output path names (or contains) one of the command's own inputs."""


def resolved(path: PathLike) -> Path:
    """`path` with `~` expanded and symlinks and `..` resolved (it need not exist)."""
    return Path(path).expanduser().resolve()


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` are the same file: same resolved path, or same device and inode."""
    ra, rb = resolved(a), resolved(b)
    if os.path.normcase(ra) == os.path.normcase(rb):
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:  # one of them does not exist yet: it cannot be the other
        return False


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.relative_to(folder)
    except ValueError:
        return False
    return True


def refuse_overwriting_inputs(output: PathLike, inputs: Iterable[PathLike | None], *, verb: str,
                              folder_output: bool = False) -> None:
    """Raise `OverwriteInputError` if writing `output` could replace one of `inputs`.

    `verb` names the command for the message (e.g. "lora convert"). With `folder_output`,
    `output` is a folder the command fills, and any input inside it is refused as well.
    """
    out = resolved(output)
    for item in inputs:
        if item is None:
            continue
        if same_file(out, item):
            raise OverwriteInputError(
                f"{verb}: the output {output} is the input {item} (the same file"
                f"{'' if str(output) == str(item) else ', under another name'}); lorakiln never writes "
                "over its inputs, whatever the flags — choose another output path")
        if folder_output and _inside(resolved(item), out):
            raise OverwriteInputError(
                f"{verb}: the output folder {output} contains the input {item}; writing the folder could "
                "replace it — choose an output folder that holds none of the inputs")
