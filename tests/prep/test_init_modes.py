"""`lorakiln dataset init` re-encodes 16-bit, float, CMYK and palette images to 8 bits with their
real range, so any trainer reads the copies right (exact pixel values checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lorakiln.data.images import open_image_rgb
from lorakiln.prep.init import init_dataset


def _pixels(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_init_converts_every_mode(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    sixteen = np.tile(np.array([0, 257, 1000, 32896, 65535], dtype=np.uint16), (8, 4))
    Image.fromarray(sixteen).save(src / "g16.png")
    Image.fromarray(np.tile(np.array([0.0, 0.25, 1.0], dtype=np.float32), (8, 4))).save(src / "f.tif")
    cmyk = Image.new("CMYK", (4, 4), (100, 50, 25, 60))
    cmyk.save(src / "c.tif")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(src / "p.gif", transparency=1)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    rgb.save(src / "plain.png")

    result = init_dataset(src, tmp_path / "train", "zwx", repeats=2)
    folder = result.folder
    reasons = {path.name: why for path, why in result.converted}
    assert "mode I;16 to 8-bit" in reasons["g16.png"]
    assert [p.name for p in result.copied] == ["plain.png"]  # 8-bit RGB: copied byte for byte

    mode, values = _pixels(folder / "g16.png")
    assert mode == "L" and values[0, :5].tolist() == [0, 1, 4, 128, 255]
    mode, values = _pixels(folder / "f.png")
    assert mode == "L" and values[0, :3].tolist() == [0, 64, 255]
    mode, values = _pixels(folder / "c.png")
    assert mode == "RGB" and values[0, 0].tolist() == [119, 157, 176]
    mode, values = _pixels(folder / "p.png")
    assert mode == "RGBA" and values[0, 0].tolist() == [0, 255, 0, 0] and values[1, 1].tolist() == [255, 0, 0, 255]
    # and the loader sees the same pixels in the copy as in the original
    for name, copy in (("g16.png", "g16.png"), ("f.tif", "f.png"), ("c.tif", "c.png"), ("p.gif", "p.png")):
        assert np.array_equal(np.asarray(open_image_rgb(src / name)), np.asarray(open_image_rgb(folder / copy)))


def test_init_converts_cmyk_jpeg_to_rgb_jpeg(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("CMYK", (16, 16), (100, 50, 25, 60)).save(src / "print.jpg", quality=100)
    result = init_dataset(src, tmp_path / "train", "zwx", repeats=1)
    mode, values = _pixels(result.folder / "print.jpg")
    assert mode == "RGB"
    # JPEG is lossy; the CMYK formula gives (119, 157, 176) before re-encoding
    assert np.abs(values[8, 8].astype(int) - [119, 157, 176]).max() <= 3
