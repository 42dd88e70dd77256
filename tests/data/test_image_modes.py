"""Every Pillow mode reaches the trainer as 8-bit RGB with its real range, checked pixel by pixel.

Each test builds an image of known pixels in one mode, saves it in a format that keeps that
mode (PNG for `I;16`, TIFF for `I;16B`/`I`/`F`/`CMYK`), reopens it to make sure Pillow really
hands the loader that mode, and compares what `open_image_rgb` / `load_pixels` return with the
values the rules in `data/image_modes.py` give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorakiln.data.image_modes import BACKGROUND, describe_mode
from lorakiln.data.images import flatten_to_rgb, load_pixels, open_image_rgb, plan_crop
from lorakiln.data.lint import LintOptions, image_findings
from lorakiln.data.quality import measure_image


def _saved(img: Image.Image, path: Path, mode: str) -> Path:
    img.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode, f"Pillow reopened {path.name} as {reopened.mode}, not {mode}"
    return path


def _row(path: Path) -> list[list[int]]:
    """The first pixel row of the loaded RGB image, as [[r, g, b], ...]."""
    return np.asarray(open_image_rgb(path))[0].tolist()


def _gray(values: list[int]) -> list[list[int]]:
    return [[v, v, v] for v in values]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    path = _saved(Image.fromarray(values), tmp_path / "g16.png", "I;16")
    # 0/257 = 0, 257/257 = 1, 1000/257 = 3.89 → 4, 32896/257 = 128, 65535/257 = 255
    assert _row(path) == _gray([0, 1, 4, 128, 255])


def test_sixteen_bit_photo_is_not_white(tmp_path: Path) -> None:
    """The reported bug: a mid-grey 16-bit photo trained as 99.6 % white."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    path = _saved(Image.fromarray(values), tmp_path / "photo16.png", "I;16")
    rgb = np.asarray(open_image_rgb(path))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.01


def test_sixteen_bit_big_endian_tiff(tmp_path: Path) -> None:
    img = Image.new("I;16B", (3, 1))
    for x, v in enumerate([0, 514, 65535]):
        img.putpixel((x, 0), v)
    path = _saved(img, tmp_path / "be.tif", "I;16B")
    assert _row(path) == _gray([0, 2, 255])


def test_sixteen_bit_load_pixels_range(tmp_path: Path) -> None:
    """Through `load_pixels` (the training tensor): 65535 → +1, 0 → −1, 32896 → 128/127.5 − 1."""
    values = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    path = _saved(Image.fromarray(values), tmp_path / "t.png", "I;16")
    tensor = load_pixels(path, plan_crop(4, 1, (4, 1)))
    assert tensor.shape == (3, 1, 4)
    expected = np.array([0, 128, 255, 255], dtype=np.float32) / 127.5 - 1.0
    assert np.allclose(tensor[0, 0].numpy(), expected) and np.allclose(tensor[2, 0].numpy(), expected)


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 257, 65535], [0, 1, 255]),  # inside 0–65535: treated as 16-bit
    ([-1000, 0, 99000], [0, 3, 255]),  # outside: min–max stretched, (0 + 1000) · 255 / 100000 = 2.55 → 3
])
def test_thirty_two_bit_integer_tiff(tmp_path: Path, values: list[int], expected: list[int]) -> None:
    path = _saved(Image.fromarray(np.array([values], dtype=np.int32)), tmp_path / "i.tif", "I")
    assert _row(path) == _gray(expected)


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.25, 1.0], [0, 64, 255]),  # 0–1: × 255 (63.75 → 64)
    ([0.0, 100.4, 255.0], [0, 100, 255]),  # 0–255: as is
    ([0.0, 1000.0, 65535.0], [0, 4, 255]),  # 0–65535: ÷ 257
    ([-1.0, 0.0, 1.0], [0, 128, 255]),  # otherwise: min–max (127.5 rounds to even 128)
    ([float("nan"), 0.5, 1.0], [0, 128, 255]),  # NaN → 0 first
])
def test_float_tiff(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    path = _saved(Image.fromarray(np.array([values], dtype=np.float32)), tmp_path / "f.tif", "F")
    assert _row(path) == _gray(expected)


def test_cmyk_tiff(tmp_path: Path) -> None:
    img = Image.new("CMYK", (4, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 128), (100, 50, 25, 60)])
    path = _saved(img, tmp_path / "c.tif", "CMYK")
    # channel = (255 − ink)(255 − K) / 255: 155·195/255 = 118.5 → 119, 205·195/255 → 157, 230·195/255 → 176
    assert _row(path) == [[255, 255, 255], [0, 255, 255], [127, 127, 127], [119, 157, 176]]


def test_one_bit_and_grayscale(tmp_path: Path) -> None:
    one = Image.new("1", (2, 1))
    one.putpixel((0, 0), 1)
    assert _row(_saved(one, tmp_path / "one.png", "1")) == _gray([255, 0])
    gray = Image.new("L", (3, 1))
    gray.putdata([0, 77, 255])
    assert _row(_saved(gray, tmp_path / "l.png", "L")) == _gray([0, 77, 255])


def test_rgb_is_unchanged(tmp_path: Path) -> None:
    img = Image.new("RGB", (2, 1))
    img.putdata([(1, 2, 3), (250, 128, 0)])
    assert _row(_saved(img, tmp_path / "rgb.png", "RGB")) == [[1, 2, 3], [250, 128, 0]]


def _over_white(c: int, a: int) -> int:
    """Straight alpha over the stated background: c·a/255 + 255·(255 − a)/255, rounded."""
    return round(c * a / 255 + BACKGROUND[0] * (255 - a) / 255)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    assert BACKGROUND == (255, 255, 255)
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (10, 20, 30, 128)])
    half = [_over_white(c, 128) for c in (10, 20, 30)]
    assert half == [132, 137, 142]
    assert _row(_saved(rgba, tmp_path / "rgba.png", "RGBA")) == [[255, 255, 255], [10, 20, 30], half]
    la = Image.new("LA", (2, 1))
    la.putdata([(10, 0), (10, 128)])
    assert _row(_saved(la, tmp_path / "la.png", "LA")) == _gray([255, _over_white(10, 128)])


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putdata([0, 1, 2])
    assert _row(_saved(img, tmp_path / "p.png", "P")) == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    img.info["transparency"] = 1  # index 1 (green) is transparent: PNG tRNS
    assert _row(_saved(img, tmp_path / "pt.png", "P")) == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]
    gif = _saved(img, tmp_path / "pt.gif", "P")
    assert _row(gif) == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]


def test_gray_with_transparent_colour(tmp_path: Path) -> None:
    """A PNG `L` image with a tRNS grey level: that level is transparent, so it becomes white."""
    img = Image.new("L", (2, 1))
    img.putdata([0, 40])
    img.info["transparency"] = 0
    assert _row(_saved(img, tmp_path / "lt.png", "L")) == _gray([255, 40])


def test_check_names_the_conversion(tmp_path: Path) -> None:
    """`dataset check` says what happened to a 16-bit file, not only "grayscale"."""
    values = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (64, 1))
    path = _saved(Image.fromarray(values), tmp_path / "g16.png", "I;16")
    stats = measure_image(path)
    assert stats.error is None and stats.mode == "I;16" and stats.grayscale and not stats.has_alpha
    findings = {f.code: f for f in image_findings([stats], LintOptions(resolution=(64, 64)))}
    assert "16-bit grayscale (I;16): converted to 8-bit RGB" in findings["image-mode"].message
    assert findings["image-mode"].paths == (str(path),)
    assert "grayscale" in findings


def test_check_names_the_background(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    stats = measure_image(_saved(rgba, tmp_path / "cut.png", "RGBA"))
    assert stats.has_alpha
    findings = {f.code: f for f in image_findings([stats], LintOptions(resolution=(64, 64)))}
    assert "white (255, 255, 255) background" in findings["transparency"].message
    assert "image-mode" not in findings


@pytest.mark.parametrize(("mode", "words"), [("I;16B", "16-bit grayscale (I;16B)"), ("CMYK", "CMYK"),
                                             ("F", "float"), ("RGB", None), ("RGBA", None)])
def test_describe_mode(mode: str, words: str | None) -> None:
    text = describe_mode(mode)
    assert (text is None) if words is None else (text is not None and words in text)


@pytest.mark.parametrize("mode", ["I;16L", "I;16N", "I;16B"])
def test_sixteen_bit_variants_in_memory(mode: str) -> None:
    """Pillow reopens an `I;16L` TIFF as `I;16`, so these modes are built in memory: the loader
    may still receive them from a decoder plugin or a caller."""
    img = Image.new(mode, (3, 1))
    for x, v in enumerate([0, 1000, 65535]):
        img.putpixel((x, 0), v)
    assert np.asarray(flatten_to_rgb(img))[0].tolist() == _gray([0, 4, 255])


def test_palette_with_alpha_in_memory() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    img.putdata([0, 1])
    pa = img.convert("PA")
    pa.putpixel((1, 0), (1, 0))  # index 1, fully transparent
    assert pa.mode == "PA"
    assert np.asarray(flatten_to_rgb(pa))[0].tolist() == [[10, 20, 30], list(BACKGROUND)]
