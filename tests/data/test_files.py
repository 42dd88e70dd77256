"""The shared image lister and caption reader: each caller's options give its old rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorakiln.data.files import list_images, read_caption


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["b.PNG", "a.jpg", "._a.jpg", "notes.txt", "anim.gif", "sub/c.webp", ".cache/d.png", "sub/.e.jpg"]:
        _touch(tmp_path / rel)
    (tmp_path / "dir.jpg").mkdir()  # a folder with an image suffix is no image
    return tmp_path


def test_recursive_skips_hidden_and_sorts(tree: Path) -> None:
    assert [p.relative_to(tree).as_posix() for p in list_images(tree)] == ["a.jpg", "b.PNG", "sub/c.webp"]


def test_trainer_view_is_one_folder_with_hidden_files(tree: Path) -> None:
    """The scanners report every image file of a subset, a macOS `._a.jpg` included."""
    names = [p.name for p in list_images(tree, recursive=False, skip_hidden=False)]
    assert names == ["._a.jpg", "a.jpg", "b.PNG"]
    with pytest.raises(FileNotFoundError):
        list_images(tree / "missing", recursive=False)
    assert list_images(tree / "missing") == []  # `dataset check` on a missing folder: no images


def test_wider_extensions(tree: Path) -> None:
    assert [p.name for p in list_images(tree, extensions={".gif"})] == ["anim.gif"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_links_followed_only_when_asked_and_each_folder_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _touch(real / "x.jpg")
    root = tmp_path / "root"
    root.mkdir()
    try:
        (root / "link").symlink_to(real, target_is_directory=True)
        (root / "link" / "loop").symlink_to(root, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not permitted")
    assert list_images(root) == []
    assert [p.relative_to(root).as_posix() for p in list_images(root, follow_links=True)] == ["link/x.jpg"]


def test_read_caption(tmp_path: Path) -> None:
    image = _touch(tmp_path / "a.jpg")
    assert read_caption(image, ".txt").text is None and read_caption(image, ".txt").error is None
    _touch(tmp_path / "a.txt", "\ufeff\n  zwx, a man \nsecond line\n".encode())
    caption = read_caption(image, ".txt")
    assert caption.caption == "zwx, a man" and caption.lines == ["zwx, a man", "second line"]
    _touch(tmp_path / "a.txt", b"caf\xe9")
    assert "not UTF-8 (byte 0xe9 at position 3)" in (read_caption(image, ".txt").error or "")
