"""`data/lint.py`: each finding triggered by a crafted file, and not by a clean dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorakiln.data import scan_dataset
from lorakiln.data.lint import LintOptions, lint_dataset
from lorakiln.data.quality import edge_sharpness, measure_image

OPTS = LintOptions(resolution=(64, 64))


def _noise(path: Path, size=(96, 96), seed=0, caption: str | None = "zwx, red shirt") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def _codes(root: Path, opts: LintOptions = OPTS, token: str | None = None) -> dict[str, list]:
    result = lint_dataset(scan_dataset(root), opts, token=token)
    return {f.code: f for f in result.findings}


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    for i, caption in enumerate(["zwx, red shirt", "zwx, blue hat", "zwx, sunglasses, beach"]):
        _noise(root / "5_zwx" / f"{i}.png", seed=i, caption=caption)
    return root


def test_clean_dataset_has_no_findings(clean: Path) -> None:
    assert _codes(clean) == {}


def test_low_resolution(clean: Path) -> None:
    _noise(clean / "5_zwx" / "small.png", size=(40, 40), seed=9)
    finding = _codes(clean)["low-resolution"]
    assert finding.paths == (str(clean / "5_zwx" / "small.png"),) and "40x40" in finding.message


def test_blurry_image(clean: Path) -> None:
    x = np.linspace(0, 255, 96)
    smooth = np.broadcast_to(x[None, :, None], (96, 96, 3)).astype(np.uint8)  # a soft gradient
    Image.fromarray(smooth).save(clean / "5_zwx" / "soft.png")
    (clean / "5_zwx" / "soft.txt").write_text("zwx, gradient", encoding="utf-8")
    finding = _codes(clean)["blurry"]
    assert finding.paths == (str(clean / "5_zwx" / "soft.png"),)
    assert edge_sharpness(np.zeros((5, 5))) == 0.0


def test_flat_graphics_are_not_blurry_but_blurred_ones_are(tmp_path: Path) -> None:
    from PIL import ImageDraw, ImageFilter

    img = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(img).ellipse([12, 12, 52, 52], fill=(250, 140, 0))  # a flat disc: sharp edges
    img.save(tmp_path / "flat.png")
    img.filter(ImageFilter.GaussianBlur(2)).save(tmp_path / "soft.png")
    sharp, soft = measure_image(tmp_path / "flat.png").sharpness, measure_image(tmp_path / "soft.png").sharpness
    assert sharp > 1.0 > OPTS.blur_threshold > soft


def test_near_duplicate_resized_and_reencoded(clean: Path) -> None:
    src = Image.open(clean / "5_zwx" / "0.png").convert("RGB")
    src.resize((80, 80)).save(clean / "5_zwx" / "copy.jpg", quality=90)
    (clean / "5_zwx" / "copy.txt").write_text("zwx, red shirt again", encoding="utf-8")
    finding = _codes(clean)["near-duplicate"]
    assert set(finding.paths) == {str(clean / "5_zwx" / "0.png"), str(clean / "5_zwx" / "copy.jpg")}


def test_grayscale_and_alpha(clean: Path) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8), "L").save(clean / "5_zwx" / "bw.png")
    (clean / "5_zwx" / "bw.txt").write_text("zwx, monochrome", encoding="utf-8")
    rgba = np.dstack([rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), np.full((96, 96), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(clean / "5_zwx" / "cut.png")
    (clean / "5_zwx" / "cut.txt").write_text("zwx, cutout", encoding="utf-8")
    codes = _codes(clean)
    assert codes["grayscale"].paths == (str(clean / "5_zwx" / "bw.png"),)
    assert codes["transparency"].paths == (str(clean / "5_zwx" / "cut.png"),)
    # an RGB file whose channels are equal is grayscale too
    gray_rgb = np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(gray_rgb).save(clean / "g.png")
    assert measure_image(clean / "g.png").grayscale


def test_caption_without_trigger_word(clean: Path) -> None:
    (clean / "5_zwx" / "1.txt").write_text("a man in a blue hat", encoding="utf-8")
    (clean / "5_zwx" / "2.txt").write_text("zwxy on a beach", encoding="utf-8")  # not a whole-word match
    finding = _codes(clean)["caption-without-token"]
    assert set(finding.paths) == {str(clean / "5_zwx" / "1.png"), str(clean / "5_zwx" / "2.png")}
    assert "--add" in finding.message


def test_trait_in_every_caption_seed_example(tmp_path: Path) -> None:
    root = tmp_path / "train"
    captions = ["photo of anantn, a man with black hair, brown skin, orange shirt",
                "photo of anantn, black hair, brown skin, sunglasses",
                "photo of anantn, black hair, brown skin, on a rock in the desert"]
    for i, caption in enumerate(captions):
        _noise(root / "15_anantn" / f"{i}.png", seed=i, caption=caption)
    result = lint_dataset(scan_dataset(root), OPTS)
    finding = {f.code: f for f in result.findings}["trait-in-every-caption"]
    assert "'black hair'" in finding.message and "'brown skin'" in finding.message
    assert "anantn" not in finding.message.split("--remove")[0]  # the trigger's own tag is not a trait
    # "black hair" is a tag in two captions and a phrase inside the third: found in all three
    assert dict(result.top_tags)["black hair"] == 2 and dict(result.top_words)["hair"] == 3


def test_common_trigger_word(tmp_path: Path) -> None:
    for i in range(2):
        _noise(tmp_path / "t" / "10_john" / f"{i}.png", seed=i, caption=f"john, pose {i}")
    finding = _codes(tmp_path / "t")["common-token"]
    assert "rank 1742" in finding.message and "10_john" in finding.message
    assert "common-token" not in _codes(tmp_path / "t", LintOptions(resolution=(64, 64), check_tokens=False))


def test_explicit_token_overrides_folder_token(clean: Path) -> None:
    assert "caption-without-token" in _codes(clean, token="TOK")


def test_images_can_be_skipped(clean: Path) -> None:
    _noise(clean / "5_zwx" / "small.png", size=(40, 40), seed=9)
    fast = LintOptions(resolution=(64, 64), check_images=False)
    assert "low-resolution" not in _codes(clean, fast)
