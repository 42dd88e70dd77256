"""The directional blur measure (`quality.edge_widths`) on generated photo-like images and graphics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from synthetic_photos import flat_graphic, motion_blur, natural

from lorakiln.data import scan_dataset
from lorakiln.data.lint import LintOptions, lint_dataset
from lorakiln.data.quality import BLUR_THRESHOLD, edge_sharpness, edge_widths, measure_image


def _measure(img: Image.Image, path: Path):
    img.save(path)
    return measure_image(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_blur_of_15_px_is_caught_in_its_direction(tmp_path: Path, seed: int) -> None:
    photo = natural(256, seed)
    sharp = _measure(photo, tmp_path / "sharp.png")
    across = _measure(motion_blur(photo, 15), tmp_path / "h.png")
    down = _measure(motion_blur(photo, 15, vertical=True), tmp_path / "v.png")
    # measured: sharp 0.86-0.88 (edges 2.3 px); blurred 0.19-0.24 (8.2-10.8 px)
    assert sharp.sharpness > 0.75 > BLUR_THRESHOLD and sharp.motion_direction is None
    assert across.sharpness < 0.35 and across.edge_width > 6 and across.motion_direction == "horizontal"
    assert down.sharpness < 0.35 and down.motion_direction == "vertical"


def test_pooled_measures_miss_motion_blur_that_this_one_catches(tmp_path: Path) -> None:
    """Why directions: the edges along the motion stay crisp, so one pooled number looks sharp."""
    blurred = np.asarray(motion_blur(natural(256, 0), 15).convert("L"), dtype=np.float64)
    widths = edge_widths(blurred).widths
    assert widths["vertical"] < 3.0 < 8.0 < widths["horizontal"]


@pytest.mark.parametrize("antialiased", [False, True])
def test_sharp_flat_graphic_is_not_flagged(tmp_path: Path, antialiased: bool) -> None:
    graphic = _measure(flat_graphic(256, antialiased=antialiased), tmp_path / "logo.png")
    assert graphic.sharpness >= 0.95 and graphic.motion_direction is None  # measured 0.99-1.00
    small = _measure(flat_graphic(64), tmp_path / "icon.png")
    assert small.sharpness >= 0.95


def test_out_of_focus_is_caught_without_a_direction(tmp_path: Path) -> None:
    soft = _measure(natural(256, 3).filter(ImageFilter.GaussianBlur(2.5)), tmp_path / "soft.png")
    assert soft.sharpness < BLUR_THRESHOLD and soft.motion_direction is None


def test_sharp_subject_on_a_soft_background_is_sharp(tmp_path: Path) -> None:
    photo = natural(256, 4)
    background = photo.filter(ImageFilter.GaussianBlur(4))
    background.paste(photo.crop((128, 0, 256, 256)), (128, 0))  # the right half in focus
    assert _measure(background, tmp_path / "bokeh.png").sharpness > BLUR_THRESHOLD


def test_images_without_edges_score_zero() -> None:
    assert edge_sharpness(np.zeros((5, 5))) == 0.0
    assert edge_sharpness(np.full((64, 64), 128.0)) == 0.0
    assert edge_widths(np.zeros((2, 9))).widths == {}


def test_blurry_finding_names_the_motion(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "5_zwx"
    folder.mkdir(parents=True)
    for i in range(3):
        natural(256, i).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"zwx, shot {i}", encoding="utf-8")
    motion_blur(natural(256, 5), 15).save(folder / "shaky.png")
    (folder / "shaky.txt").write_text("zwx, shaky", encoding="utf-8")
    flat_graphic(256).save(folder / "logo.png")
    (folder / "logo.txt").write_text("zwx, logo", encoding="utf-8")
    findings = {f.code: f for f in lint_dataset(scan_dataset(tmp_path / "train"), LintOptions(resolution=(256, 256))).findings}
    blurry = findings["blurry"]
    assert blurry.paths == (str(folder / "shaky.png"),)
    assert "motion blur horizontal" in blurry.message and "4.0 px" in blurry.message
