"""Fixtures for the data tests: tiny images written with Pillow into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MakeImage = Callable[..., Path]


@pytest.fixture
def make_image() -> MakeImage:
    """Write an image; `caption=None` writes no caption file. Returns the image path."""

    def _make(path: Path, size: tuple[int, int] = (64, 48), *, caption: str | None = None,
              color: tuple[int, int, int] = (200, 30, 30), caption_ext: str = ".txt",
              noise_seed: int | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if noise_seed is None:
            img = Image.new("RGB", size, color)
        else:
            rng = np.random.default_rng(noise_seed)
            img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        img.save(path)
        if caption is not None:
            path.with_suffix(caption_ext).write_text(caption, encoding="utf-8")
        return path

    return _make


@pytest.fixture
def simple_dataset(tmp_path: Path, make_image: MakeImage) -> Path:
    """Two folders: `3_zwx toy` (2 captioned landscape images) and `2_sks` (portrait + square)."""
    root = tmp_path / "train"
    make_image(root / "3_zwx toy" / "a.png", (96, 64), caption="zwx toy, red, small")
    make_image(root / "3_zwx toy" / "b.jpg", (90, 60), caption="zwx toy, blue")
    make_image(root / "2_sks" / "c.png", (64, 96), caption="sks, portrait")
    make_image(root / "2_sks" / "d.webp", (80, 80), caption="sks, red")
    return root
