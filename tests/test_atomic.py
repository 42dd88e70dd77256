"""Atomic writes keep the user's umask: a LoRA written 0600 cannot be read by another user's A1111."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorakiln.atomic import current_umask, temp_folder_beside, write_bytes_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_temp_folders_get_the_mode_open_and_mkdir_would_give(tmp_path: Path, umask: int) -> None:
    assert current_umask() == umask
    write_bytes_atomic(tmp_path / "a.safetensors", b"x")
    write_text_atomic(tmp_path / "b.toml", "x = 1\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    assert _mode(tmp_path / "a.safetensors") == _mode(tmp_path / "b.toml") == _mode(plain) == 0o666 & ~umask
    folder = temp_folder_beside(tmp_path / "state")
    assert folder.parent == tmp_path and folder.name.startswith(".state.")
    assert _mode(folder) == 0o777 & ~umask
