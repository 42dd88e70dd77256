"""Atomic file writes: a temporary file in the same folder, then `os.replace`.

A crash or a SIGKILL mid-write leaves either the old file or the new one, never a truncated
file. The temporary file gets the permissions a plain `open()` would give (0666 less the user's
umask, so 0644 by default): `tempfile.mkstemp` makes it 0600, and renamed into place that would
leave a LoRA that another user's AUTOMATIC1111 or ComfyUI cannot read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc/self/status, 4.7+);
    elsewhere set-and-restore, which is only racy against other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str], *, folder: bool = False) -> None:
    """Give `path` the mode `open()`/`mkdir()` would have: 0666 (files) or 0777 (folders) less the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def temp_folder_beside(dest: str | os.PathLike[str], suffix: str = "") -> Path:
    """A new hidden temporary folder next to `dest` (same filesystem, so it can be renamed over it),
    with ordinary permissions instead of `mkdtemp`'s 0700."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
    apply_umask(tmp, folder=True)
    return tmp


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is fsynced and renamed over `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    apply_umask(tmp_path)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
