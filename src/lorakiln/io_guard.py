"""The one rule every writer obeys: never write over one of its own inputs.

`lorakiln lora convert a.safetensors a.safetensors --force` must not destroy `a.safetensors`,
whatever the flags; neither may a UI tool, a merge, a resize or a dataset edit. Paths are
compared after resolving symlinks, `..` and `~`, and by file identity (`os.path.samefile`:
device and inode), so another spelling, a symlink or a hard link of the input is caught too.
A folder output (a diffusers folder, a dataset copy) is refused when an input lies inside it,
because writing the folder may replace or delete that input.

`check_output` adds the rest of what every writing command (the LoRA tools, generation, the
contact sheet, `prep init`, the toy world) checks before a long job starts, so an output mistake
is not found after minutes of work: a file output is not an existing folder and vice versa, the
nearest existing parent is a writable folder, and an existing output is replaced only with
``--force``. `write_output` writes atomically (`lorakiln.atomic`) and turns a full disk, a quota
or a read-only folder into one `OutputWriteError` naming the file. They sit here, at the bottom,
because writers in every layer share them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lorakiln.atomic import write_bytes_atomic
from lorakiln.errors import LorakilnError, OutputWriteError

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


def check_output(output: PathLike, inputs: Iterable[PathLike | None], *, verb: str, force: bool,
                 folder_output: bool = False) -> Path:
    """Raise `LorakilnError` if `output` may not be written by `verb` (module docstring); returns it."""
    output = Path(output).expanduser()
    refuse_overwriting_inputs(output, list(inputs), verb=verb, folder_output=folder_output)
    if not folder_output and output.is_dir():
        raise LorakilnError(f"{verb}: the output {output} is an existing folder; name a file, e.g. "
                            f"{output / 'name.safetensors'}")
    if folder_output and output.exists() and not output.is_dir():
        raise LorakilnError(f"{verb}: the output {output} is an existing file, but this output is a folder; "
                            "name a new folder")
    _check_parent(output, verb)
    if output.exists() and not force:
        raise LorakilnError(f"{output} exists; pass --force to overwrite it")
    return output


def _check_parent(output: Path, verb: str) -> None:
    """The nearest existing ancestor must be a folder we may write in (missing ones are created)."""
    for parent in output.absolute().parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise LorakilnError(f"{verb}: cannot write {output}: {parent} is a file, not a folder; choose an "
                                "output path inside a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise LorakilnError(f"{verb}: cannot write {output}: the folder {parent} is not writable for you; "
                                "choose another output folder")
        return


def write_output(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; a disk or permission failure becomes `OutputWriteError`."""
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        if err.errno not in OutputWriteError.ERRNOS:
            raise
        raise OutputWriteError.from_os_error(path, err) from None
