"""Fixtures for the dataset-preparation tests: noise images (sharp, distinct) written with Pillow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MakeImage = Callable[..., Path]


@pytest.fixture
def noise_image() -> MakeImage:
    """Write a noise image (distinct per seed, sharp); `caption=None` writes no caption."""

    def make(path: Path, size: tuple[int, int] = (96, 96), *, seed: int = 0, caption: str | None = None,
             ext: str = ".txt", **save: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save)
        if caption is not None:
            path.with_suffix(ext).write_text(caption, encoding="utf-8")
        return path

    return make
