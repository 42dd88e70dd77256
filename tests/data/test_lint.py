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
    assert sharp >= 0.9 > OPTS.blur_threshold > soft


def test_near_duplicate_resized_and_reencoded(clean: Path) -> None:
    src = Image.open(clean / "5_zwx" / "0.png").convert("RGB")
    src.resize((80, 80)).save(clean / "5_zwx" / "copy.jpg", quality=90)
    (clean / "5_zwx" / "copy.txt").write_text("zwx, red shirt again", encoding="utf-8")
    finding = _codes(clean)["near-duplicate"]
    assert set(finding.paths) == {str(clean / "5_zwx" / "0.png"), str(clean / "5_zwx" / "copy.jpg")}


def test_grayscale_and_alpha(clean: Path) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8), "L").save(clean / "5_zwx" / "bw.png")
    (clean / "5_zwx" / "bw.txt").write_text("zwx, old photo", encoding="utf-8")
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


def test_far_below_the_resolution_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for i in range(3):
        _noise(root / "5_zwx" / f"{i}.png", size=(600, 600), seed=i, caption=f"zwx, shot {i}")
    _noise(root / "5_zwx" / "gif_frame.png", size=(14, 25), seed=5, caption="zwx, tiny")  # the 14x25 GIF's size
    _noise(root / "5_zwx" / "edge.png", size=(127, 127), seed=6, caption="zwx, just under")
    _noise(root / "5_zwx" / "thumb.png", size=(128, 128), seed=7, caption="zwx, a quarter")
    _noise(root / "5_zwx" / "half.png", size=(300, 300), seed=8, caption="zwx, half")
    codes = _codes(root, LintOptions(resolution=(512, 512)))
    tiny = codes["too-small"]
    assert tiny.severity == "error" and "14x25" in tiny.message and "more than 4x per side" in tiny.message
    assert {Path(p).name for p in tiny.paths} == {"gif_frame.png", "edge.png"}
    assert {Path(p).name for p in codes["low-resolution"].paths} == {"thumb.png", "half.png"}
    assert codes["low-resolution"].severity == "warning"


@pytest.mark.parametrize(("caption", "hinted"), [
    ("zwx, old photo", True), ("zwx, black hair and white shirt", True),
    ("zwx, black and white photo", False), ("zwx, Black-and-White", False), ("zwx, monochrome", False),
    ("zwx, greyscale", False), ("zwx, grayscale", False), ("zwx, gray scale portrait", False),
    ("zwx, b&w", False), ("zwx, B & W film", False), ("zwx, b/w", False), ("zwx, monochromatic", False)])
def test_grayscale_hint_reads_the_caption(clean: Path, caption: str, hinted: bool) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8), "L").save(clean / "5_zwx" / "bw.png")
    (clean / "5_zwx" / "bw.txt").write_text(caption, encoding="utf-8")
    assert ("grayscale" in _codes(clean)) is hinted


def _frames(path: Path, count: int, **save) -> Path:
    rng = np.random.default_rng(len(path.name))
    frames = [Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **save)
    return path


def test_animated_images_are_reported(clean: Path) -> None:
    _frames(clean / "5_zwx" / "wave.webp", 4, lossless=True)
    (clean / "5_zwx" / "wave.txt").write_text("zwx, waving", encoding="utf-8")
    _frames(clean / "5_zwx" / "blink.png", 3)  # APNG
    (clean / "5_zwx" / "blink.txt").write_text("zwx, blinking", encoding="utf-8")
    finding = _codes(clean)["animated"]
    assert set(finding.paths) == {str(clean / "5_zwx" / "wave.webp"), str(clean / "5_zwx" / "blink.png")}
    assert "wave.webp 4 frames" in finding.message and "only the first frame is trained" in finding.message


def test_animated_gif_is_named_among_the_ignored_files(clean: Path) -> None:
    gif = _frames(clean / "5_zwx" / "dance.gif", 24)
    warnings = {w[0]: w for w in scan_dataset(clean).scan_warnings}
    unsupported = warnings["unsupported-format"]
    assert "1 of them animated (dance.gif: 24 frames)" in unsupported[1]
    assert unsupported.paths == (str(gif),)


def test_findings_list_every_path(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for i in range(14):
        _noise(root / "5_zwx" / f"{i:02}.png", size=(40, 40), seed=i, caption=f"shot {i}")
    codes = _codes(root)
    assert len(codes["low-resolution"].paths) == 14
    assert len(codes["caption-without-token"].paths) == 14


def test_fix_commands_are_quoted_for_the_shell(tmp_path: Path) -> None:
    import shlex

    root = tmp_path / "my train"
    captions = ["anantn, black hair, a", "black hair, b", "anantn, black hair, c"]
    for i, caption in enumerate(captions):
        _noise(root / "10_anantn person" / f"{i}.png", seed=i, caption=caption)
    codes = _codes(root)
    command = codes["caption-without-token"].message.split("`")[1]
    assert shlex.split(command) == ["lorakiln", "dataset", "edit", str(root / "10_anantn person"), "--add",
                                    "photo of anantn", "--at", "start"]
    command = codes["trait-in-every-caption"].message.split("`")[1]
    assert shlex.split(command) == ["lorakiln", "dataset", "edit", str(root), "--remove", "black hair"]


def test_trigger_phrases_are_never_advised_out(tmp_path: Path) -> None:
    """An instance prompt's words, and every token of a comma-separated token_abstraction, stay."""
    import json

    folder = tmp_path / "img"
    captions = ["a photo of TOK man, black hair", "a photo of TOK man on a beach", "a photo of TOK man, smiling"]
    for i in range(len(captions)):
        _noise(folder / f"{i}.png", seed=i, caption=None)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": c}) + "\n"
                                                   for i, c in enumerate(captions)), encoding="utf-8")
    dataset = scan_dataset(folder, caption_column="text", instance_prompt="a photo of TOK man")
    result = lint_dataset(dataset, OPTS)
    assert not result.findings and "tok" not in dict(result.top_words)
    # two pivotal concepts: a caption with either token has its trigger word
    both = lint_dataset(dataset, OPTS, token="SKS, TOK")
    assert not [f for f in both.findings if f.code in ("caption-without-token", "trait-in-every-caption")]
