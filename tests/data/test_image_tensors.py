"""Image → tensor: EXIF, alpha on white, resize-to-cover, crops, flips, value range."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakiln.data.images import load_pixels, open_image_rgb, plan_crop


def test_plan_centre_crop_covers_bucket() -> None:
    plan = plan_crop(600, 900, (384, 640))
    assert plan.resized_size == (427, 640)  # scale 640/900, kohya int(x + 0.5)
    assert plan.crop_top_left == (0, 21)
    assert plan.target_size == (640, 384)
    assert plan.conditioning_crop_top_left == (0, 21)


def test_plan_flip_mirrors_conditioning_left() -> None:
    plan = plan_crop(600, 900, (384, 640), flip=True)
    assert plan.crop_top_left == (0, 21)
    assert plan.conditioning_crop_top_left == (0, 427 - 21 - 384)


def test_random_crop_is_reproducible_and_in_range() -> None:
    plans = [plan_crop(1000, 500, (512, 512), random_crop=True, rng=random.Random(s)) for s in range(20)]
    lefts = {p.crop_top_left[1] for p in plans}
    assert len(lefts) > 1
    assert all(0 <= p.crop_top_left[1] <= p.resized_size[0] - 512 for p in plans)
    again = plan_crop(1000, 500, (512, 512), random_crop=True, rng=random.Random(3))
    assert again == plans[3]
    with pytest.raises(ValueError):
        plan_crop(1000, 500, (512, 512), random_crop=True)


def test_load_pixels_shape_range_dtype(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "a.png", (96, 64), noise_seed=1)
    pixels = load_pixels(path, plan_crop(96, 64, (64, 64)))
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_load_pixels_flip(tmp_path: Path) -> None:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[:, :32] = 255  # left half white
    Image.fromarray(array).save(tmp_path / "half.png")
    plain = load_pixels(tmp_path / "half.png", plan_crop(64, 64, (64, 64)))
    flipped = load_pixels(tmp_path / "half.png", plan_crop(64, 64, (64, 64), flip=True))
    assert plain[:, :, 0].mean() == pytest.approx(1.0)
    assert flipped[:, :, 0].mean() == pytest.approx(-1.0)
    assert torch.equal(flipped, plain.flip(-1))


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_image_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "pal.png", transparency=0)
    assert open_image_rgb(tmp_path / "pal.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied_when_loading(tmp_path: Path) -> None:
    array = np.zeros((60, 120, 3), dtype=np.uint8)
    array[:, :60] = 255  # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise → white ends up on top
    Image.fromarray(array).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    img = open_image_rgb(tmp_path / "phone.jpg")
    assert img.size == (60, 120)
    pixels = load_pixels(tmp_path / "phone.jpg", plan_crop(60, 120, (60, 120)))
    assert pixels[:, :50].mean() > 0.9 and pixels[:, 70:].mean() < -0.9
