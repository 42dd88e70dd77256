"""`lorakiln dataset init`: mixed formats, rotated EXIF and duplicate stems → a clean kohya folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prep_support import tree_digest

from lorakiln.cli import main
from lorakiln.data import scan_dataset
from lorakiln.errors import DatasetError
from lorakiln.prep.init import init_dataset, plan_repeats


@pytest.fixture
def photos(tmp_path: Path, noise_image) -> Path:
    src = tmp_path / "photos"
    noise_image(src / "a.jpg", (120, 80), seed=1, caption="photo of zwx, beach")
    noise_image(src / "a.png", (90, 90), seed=2)  # same stem as a.jpg
    noise_image(src / "sub" / "a.webp", (100, 100), seed=3)  # and again, in a subfolder
    noise_image(src / "scan.tiff", (100, 100), seed=4, caption="photo of zwx, scan", ext=".caption")
    noise_image(src / "old.bmp", (64, 64), seed=5)
    # a phone portrait: stored 200x100 landscape with EXIF orientation 6 (rotate 90° clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image(src / "phone.jpg", (200, 100), seed=6, exif=exif)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "notes.md").write_text("not an image", encoding="utf-8")
    return src


def test_init_gives_a_clean_kohya_folder_the_trainer_accepts(photos: Path, tmp_path: Path) -> None:
    before = tree_digest(photos)
    result = init_dataset(photos, tmp_path / "train", "zwx", class_token="toy", repeats=10)
    assert tree_digest(photos) == before  # the source is only read
    assert result.folder == tmp_path / "train" / "10_zwx toy"
    names = sorted(p.name for p in result.folder.iterdir())
    # a.png shared a.txt with a.jpg in the source (kohya would read it for both), so both keep it
    assert names == ["a.jpg", "a.txt", "a_2.png", "a_2.txt", "a_3.webp", "old.png", "phone.jpg", "scan.png",
                     "scan.txt"]
    assert [str(p) for p, _ in result.skipped] == [str(photos / "broken.jpg")]
    assert (result.folder / "scan.txt").read_text(encoding="utf-8") == "photo of zwx, scan"  # .caption → .txt
    with Image.open(result.folder / "phone.jpg") as im:
        assert im.size == (100, 200) and im.getexif().get(0x0112, 1) == 1  # pixels rotated, tag gone
    assert tree_digest(result.folder)["a.jpg"] == hashlib.sha256((photos / "a.jpg").read_bytes()).hexdigest()
    dataset = scan_dataset(tmp_path / "train")  # the trainer's scanner: no error
    assert dataset.num_images == 6 and dataset.subsets[0].repeats == 10
    assert dataset.subsets[0].class_token == "toy"
    assert "skipped" in result.format() and "renamed" in result.format()


def test_rotated_pixels_match_exif_transpose(photos: Path, tmp_path: Path) -> None:
    result = init_dataset(photos, tmp_path / "t", "zwx", repeats=1)
    with Image.open(photos / "phone.jpg") as raw:
        from PIL import ImageOps

        expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"), dtype=float)
    got = np.asarray(Image.open(result.folder / "phone.jpg").convert("RGB"), dtype=float)
    assert np.abs(got - expected).mean() < 8  # one JPEG re-encode at quality 95


def test_auto_repeats_follow_the_seed() -> None:
    plan = plan_repeats(25)  # the kohya_ss walkthrough: 25 images, batch 1 → 1500–2000 steps
    assert 1500 <= plan.steps <= 2000 and plan.repeats >= plan.epochs and 5 <= plan.epochs <= 20
    assert plan.steps == 25 * plan.repeats * plan.epochs
    assert "25 images x" in plan.explain()
    style = plan_repeats(25, kind="style")
    assert 3000 <= style.steps <= 4000
    big = plan_repeats(5000)  # cannot land in range with ≥5 epochs: the closest is said so
    assert big.repeats == 1 and big.epochs == 5 and "closest reachable" in big.explain()
    assert plan_repeats(25, batch_size=2).steps <= 2000


def test_max_side_and_refusals(photos: Path, tmp_path: Path, noise_image) -> None:
    result = init_dataset(photos, tmp_path / "t", "zwx", repeats=2, max_side=64)
    with Image.open(result.folder / "a.jpg") as im:
        assert max(im.size) == 64
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        init_dataset(photos, tmp_path / "t", "zwx", repeats=2)
    with pytest.raises(DatasetError, match="inside the source"):
        init_dataset(photos, photos / "out", "zwx", repeats=2)
    with pytest.raises(DatasetError, match="one word"):
        init_dataset(photos, tmp_path / "u", "zwx toy", repeats=2)
    with pytest.raises(DatasetError, match="no images"):
        init_dataset(_empty(tmp_path), tmp_path / "v", "zwx")


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_cli_init_prints_arithmetic_and_token(photos: Path, tmp_path: Path, capsys) -> None:
    assert main(["dataset", "init", str(photos), "--token", "mary", "--dest", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "6 images x" in out and "steps (within the 1500–2000 target)" in out
    assert "common word" in out and "max_train_epochs" in out
    assert main(["dataset", "init", str(photos), "--token", "zwx", "--repeats", "lots"]) == 2


def test_copies_are_writable_whatever_the_source_mode(tmp_path: Path, noise_image) -> None:
    import os
    import stat

    src = tmp_path / "photos"
    for name in ("a.jpg", "b.png"):
        noise_image(src / name, (64, 64), seed=len(name), caption="zwx, photo")
    noise_image(src / "c.bmp", (64, 64), seed=9)  # converted, not copied
    for path in src.iterdir():
        path.chmod(0o444)  # a read-only photo library
    old_umask = os.umask(0o022)
    try:
        result = init_dataset(src, tmp_path / "train", "zwx", repeats=5)
    finally:
        os.umask(old_umask)
    written = sorted(result.folder.iterdir())
    assert {p.name for p in written} == {"a.jpg", "a.txt", "b.png", "b.txt", "c.png"}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    assert (result.folder / "a.jpg").stat().st_mtime_ns == (src / "a.jpg").stat().st_mtime_ns


def test_animated_gif_keeps_its_first_frame_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (25, 14, 3), dtype=np.uint8)) for _ in range(24)]
    frames[0].save(src / "dance.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    result = init_dataset(src, tmp_path / "train", "zwx", repeats=5)
    [(written, why)] = result.converted
    assert written.name == "dance.png" and "animated, 24 frames: first frame kept" in why
    assert "animated, 24 frames: first frame kept" in result.format()
    with Image.open(written) as im:
        assert getattr(im, "n_frames", 1) == 1


def test_cli_next_commands_are_quoted(photos: Path, tmp_path: Path, capsys) -> None:
    import shlex

    dest = tmp_path / "my train"
    assert main(["dataset", "init", str(photos), "--token", "anantn", "--class", "person", "--dest", str(dest)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("next: "))
    caption, check = line.removeprefix("next: ").split("   then   ")
    assert shlex.split(caption) == ["lorakiln", "caption", str(dest), "--prefix", "photo of anantn, "]
    assert shlex.split(check) == ["lorakiln", "dataset", "check", str(dest)]
