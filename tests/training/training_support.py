"""Helpers the training tests import by name. A module of its own, not `conftest`: with several
`conftest.py` files on the import path, `from conftest import …` gets whichever conftest was
imported first, so a test's imports would depend on which other tests ran before it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def draw_dataset(root: Path, count: int = 4, folder: str = "5_zwx toy") -> Path:
    """`count` 64-px images of a purple disc on coloured grounds, captioned, in one kohya folder."""
    sub = root / folder
    sub.mkdir(parents=True, exist_ok=True)
    colours = [(200, 60, 60), (60, 160, 80), (60, 90, 200), (220, 200, 60), (120, 120, 120)]
    for i in range(count):
        img = Image.new("RGB", (64, 64), colours[i % len(colours)])
        d = ImageDraw.Draw(img)
        x = 12 + 8 * i
        d.ellipse([x, 14, x + 30, 44], fill=(130, 60, 170))
        img.save(sub / f"img{i}.png")
        (sub / f"img{i}.txt").write_text(f"photo of zwx, a toy, picture {i}", encoding="utf-8")
    return root
