"""Where the LoRA tools may write, checked before the work starts, and the write itself.

Every writing verb (convert, resize, merge, extract, ZipLoRA) calls `check_output` first: a
merge or an SDXL resize can take minutes, and an output mistake found after them wastes those
minutes or, worse, replaces one of the user's inputs. The rules, in order:

1. never one of the command's own inputs, whatever the flags (`lorakiln.io_guard`: resolved
   paths and file identity, so another spelling, a symlink or a hard link is caught);
2. a file output is not an existing folder, a folder output not an existing file;
3. the nearest existing parent is a folder (``a.txt/out.safetensors`` cannot be created);
4. an existing output is replaced only with ``--force``.

`write_output` writes atomically (`lorakiln.atomic`) and turns a full disk, a quota or a
read-only folder into one `OutputWriteError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lorakiln.atomic import write_bytes_atomic
from lorakiln.errors import LorakilnError, OutputWriteError
from lorakiln.io_guard import PathLike, refuse_overwriting_inputs


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
