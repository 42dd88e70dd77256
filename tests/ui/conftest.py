"""Fixtures for the UI tests: a project folder with a tiny kohya dataset for real trainings."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tmp_path` with a 2-image kohya dataset (5 repeats) in `train/5_zwx`; trainings started from
    it run single-threaded (2-core CI) with a private LORAKILN_HOME."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    sub = tmp_path / "train" / "5_zwx"
    sub.mkdir(parents=True)
    for i in range(2):
        img = Image.new("RGB", (64, 64), (60 + 100 * i, 120, 200))
        ImageDraw.Draw(img).ellipse([10 + 10 * i, 12, 44, 46], fill=(140, 60, 170))
        img.save(sub / f"z{i}.png")
        (sub / f"z{i}.txt").write_text("photo of zwx", encoding="utf-8")
    return tmp_path
