"""Class images for prior preservation: generate-once bookkeeping, manifest, and scanning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.data import (
    count_class_images,
    missing_class_images,
    read_class_manifest,
    scan_class_images,
    write_class_images,
)
from lorakiln.errors import DatasetError

PROMPT = "a photo of a dog"


def _fake_pipeline(n: int, calls: list[int]) -> list[Image.Image]:
    """Stands in for the base-model pipeline the trainer calls; records how often it ran."""
    calls.append(n)
    return [Image.new("RGB", (64, 64), (i * 20 % 256, 100, 50)) for i in range(n)]


def _ensure(class_dir: Path, num: int, calls: list[int], prompt: str = PROMPT) -> None:
    """What the trainer does before training: generate only what is missing."""
    missing = missing_class_images(class_dir, num, prompt=prompt, base_model="sd15")
    if missing:
        write_class_images(class_dir, _fake_pipeline(missing, calls), prompt,
                           start_index=count_class_images(class_dir), base_model="sd15")


def test_generate_then_reuse_on_second_run(tmp_path: Path) -> None:
    class_dir, calls = tmp_path / "class", []
    assert missing_class_images(class_dir, 5) == 5  # folder does not exist yet
    _ensure(class_dir, 5, calls)
    assert calls == [5] and count_class_images(class_dir) == 5
    assert sorted(p.name for p in class_dir.glob("*.png")) == [f"class_{i:05d}.png" for i in range(5)]
    assert (class_dir / "class_00003.txt").read_text(encoding="utf-8").strip() == PROMPT
    manifest = read_class_manifest(class_dir)
    assert manifest is not None
    assert (manifest["prompt"], manifest["count"], manifest["base_model"]) == (PROMPT, 5, "sd15")
    _ensure(class_dir, 5, calls)  # second run: nothing generated
    _ensure(class_dir, 3, calls)  # fewer wanted: reuse
    assert calls == [5]
    _ensure(class_dir, 7, calls)  # more wanted: only the difference
    assert calls == [5, 2] and read_class_manifest(class_dir)["count"] == 7
    assert not list(class_dir.glob(".*.tmp"))  # atomic writes leave no temp files


def test_never_overwrites_and_fills_gaps(tmp_path: Path) -> None:
    class_dir = tmp_path / "class"
    write_class_images(class_dir, _fake_pipeline(3, []), PROMPT, 0)
    (class_dir / "class_00001.png").unlink()
    (class_dir / "class_00001.txt").unlink()
    assert missing_class_images(class_dir, 3) == 1
    written = write_class_images(class_dir, _fake_pipeline(2, []), PROMPT, start_index=2)
    assert [p.name for p in written] == ["class_00003.png", "class_00004.png"]  # 00002 exists: skipped
    assert read_class_manifest(class_dir)["files"] == [f"class_{i:05d}.png" for i in (0, 2, 3, 4)]


def test_reused_images_from_other_prompt_warn(tmp_path: Path, caplog) -> None:
    class_dir = tmp_path / "class"
    _ensure(class_dir, 2, [])
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        assert missing_class_images(class_dir, 2, prompt="a photo of a cat") == 0
    assert any("'a photo of a dog'" in r.getMessage() and "reused" in r.getMessage() for r in caplog.records)


def test_scan_flat_folder_captions_and_limit(tmp_path: Path, make_image) -> None:
    class_dir = tmp_path / "class"
    write_class_images(class_dir, _fake_pipeline(3, []), PROMPT, 0)
    make_image(class_dir / "real.png", (48, 64))  # hand-picked real image, no caption
    make_image(class_dir / "zzz.png", caption="a dog on a beach")
    ds = scan_class_images(class_dir, "a dog")
    captions = {it.path.name: it.caption for it in ds.items}
    assert captions == {"class_00000.png": PROMPT, "class_00001.png": PROMPT, "class_00002.png": PROMPT,
                        "real.png": "a dog", "zzz.png": "a dog on a beach"}
    assert ds.num_missing_captions == 1
    assert scan_class_images(class_dir, "a dog", num_class_images=2).num_images == 2  # diffusers min(len, n)
    with pytest.raises(DatasetError, match="real.png' has no .txt caption; add a caption file or set class_prompt"):
        scan_class_images(class_dir)


def test_scan_kohya_reg_folders_and_mixed(tmp_path: Path, make_image) -> None:
    reg = tmp_path / "reg"
    make_image(reg / "2_dog" / "r1.png")
    make_image(reg / "2_dog" / "r2.png", caption="dog, grass")
    make_image(reg / "1_cat" / "c1.png")
    (reg / "samples").mkdir()  # not a `<repeats>_` folder: ignored
    ds = scan_class_images(reg)
    assert [(s.name, s.repeats) for s in ds.subsets] == [("1_cat", 1), ("2_dog", 2)]
    assert [it.caption for it in ds.items] == ["cat", "dog", "dog, grass"]
    assert ds.num_repeated_images == 5 and count_class_images(reg) == 3
    write_class_images(reg, _fake_pipeline(1, []), PROMPT, 0)  # generated images go to the top level
    mixed = scan_class_images(reg, PROMPT)
    assert [s.name for s in mixed.subsets] == ["reg", "1_cat", "2_dog"] and mixed.num_images == 4


def test_scan_errors(tmp_path: Path, make_image) -> None:
    with pytest.raises(DatasetError, match="class_data_dir .* does not exist"):
        scan_class_images(tmp_path / "nope", PROMPT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class images") as info:
        scan_class_images(tmp_path / "empty", PROMPT)
    assert "num_class_images" in str(info.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="x.png' cannot be read"):
        scan_class_images(tmp_path / "bad", PROMPT)
