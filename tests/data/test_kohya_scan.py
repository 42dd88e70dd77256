"""kohya folder scanning: happy path, metadata helpers, and one test per bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.data import scan_kohya_dataset
from lorakiln.data.kohya import MAX_LISTED_PROBLEMS, parse_folder_name
from lorakiln.errors import DatasetError


def test_scan_happy_path(simple_dataset: Path) -> None:
    ds = scan_kohya_dataset(simple_dataset)
    assert [s.name for s in ds.subsets] == ["2_sks", "3_zwx toy"]
    sks, zwx = ds.subsets
    assert (sks.repeats, sks.token, sks.class_token) == (2, "sks", None)
    assert (zwx.repeats, zwx.token, zwx.class_token) == (3, "zwx", "toy")
    assert ds.num_images == 4
    assert ds.num_repeated_images == 2 * 2 + 2 * 3
    assert ds.num_missing_captions == 0
    assert [it.path.name for it in ds.items] == ["c.png", "d.webp", "a.png", "b.jpg"]
    assert {it.subset_index for it in zwx.items} == {1}
    assert (ds.items[0].width, ds.items[0].height) == (64, 96)


def test_tag_frequency_and_dirs_info(simple_dataset: Path) -> None:
    ds = scan_kohya_dataset(simple_dataset)
    assert ds.tag_frequency() == {
        "2_sks": {"sks": 2, "portrait": 1, "red": 1},
        "3_zwx toy": {"zwx toy": 2, "red": 1, "small": 1, "blue": 1},
    }
    assert ds.dataset_dirs_info() == {"2_sks": {"n_repeats": 2, "img_count": 2},
                                      "3_zwx toy": {"n_repeats": 3, "img_count": 2}}


@pytest.mark.parametrize(("name", "expected"), [
    ("15_anantn", (15, "anantn", None)),
    ("10_zwx toy", (10, "zwx", "toy")),
    ("1_my_token", (1, "my_token", None)),
    ("5_sks  red dog", (5, "sks", "red dog")),
])
def test_parse_folder_name(name: str, expected: tuple) -> None:
    assert parse_folder_name(name) == expected


def test_uppercase_extensions_and_hidden_dirs(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "1_x" / "A.JPG", caption="x")
    make_image(tmp_path / "1_x" / "B.PnG", caption="x")
    make_image(tmp_path / ".ipynb_checkpoints" / "junk.png")
    ds = scan_kohya_dataset(tmp_path)
    assert ds.num_images == 2


def test_caption_fallback_and_single_warning(tmp_path: Path, make_image, caplog) -> None:
    make_image(tmp_path / "10_zwx toy" / "a.png")
    make_image(tmp_path / "10_zwx toy" / "b.png")
    make_image(tmp_path / "10_zwx toy" / "c.png", caption="   \n")  # empty caption file
    make_image(tmp_path / "4_sks" / "d.png")
    make_image(tmp_path / "4_sks" / "e.png", caption="sks, smiling")
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        ds = scan_kohya_dataset(tmp_path)
    captions = {it.path.name: it.caption for it in ds.items}
    assert captions == {"a.png": "zwx toy", "b.png": "zwx toy", "c.png": "zwx toy", "d.png": "sks",
                        "e.png": "sks, smiling"}
    assert ds.num_missing_captions == 4
    caption_warnings = [r for r in caplog.records if "no .txt caption" in r.getMessage()]
    assert len(caption_warnings) == 1
    assert caption_warnings[0].getMessage().startswith("4 image(s)")


def test_bom_is_stripped_and_first_line_used(tmp_path: Path, make_image, caplog) -> None:
    img = make_image(tmp_path / "1_x" / "a.png")
    img.with_suffix(".txt").write_bytes("\ufeffx, smile\nsecond line\n".encode())
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        ds = scan_kohya_dataset(tmp_path)
    assert ds.items[0].caption == "x, smile"
    assert any("more than one line" in r.getMessage() for r in caplog.records)


def test_caption_extension_without_dot(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "1_x" / "a.png", caption="hello", caption_ext=".caption")
    ds = scan_kohya_dataset(tmp_path, caption_extension="caption")
    assert ds.items[0].caption == "hello"
    assert ds.caption_extension == ".caption"


def test_other_caption_extension_warns(tmp_path: Path, make_image, caplog) -> None:
    make_image(tmp_path / "1_x" / "a.png", caption="hello", caption_ext=".caption")
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        ds = scan_kohya_dataset(tmp_path, caption_extension=".txt")
    assert ds.items[0].caption == "x"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'.caption'" in messages and "a.caption" in messages


def test_full_name_caption_warns(tmp_path: Path, make_image, caplog) -> None:
    img = make_image(tmp_path / "1_x" / "a.png")
    (img.parent / "a.png.txt").write_text("hello", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        scan_kohya_dataset(tmp_path)
    assert any("a.png.txt" in r.getMessage() for r in caplog.records)


def test_empty_subfolder_warns(tmp_path: Path, make_image, caplog) -> None:
    make_image(tmp_path / "1_x" / "a.png", caption="x")
    (tmp_path / "5_empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        ds = scan_kohya_dataset(tmp_path)
    assert ds.num_images == 1
    assert any("5_empty" in r.getMessage() and "no images" in r.getMessage() for r in caplog.records)


# -- errors: each names the offending file or folder ----------------------------------------


def _error(root: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        scan_kohya_dataset(root, **kwargs)
    return str(info.value)


def test_missing_train_dir(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope")
    assert "nope" in message and "does not exist" in message


def test_train_dir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    message = _error(path)
    assert "file.txt" in message and "not a folder" in message


def test_folder_without_repeats_prefix(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "zwx" / "a.png", caption="x")
    message = _error(tmp_path)
    assert "zwx" in message and "`10_zwx`" in message


@pytest.mark.parametrize("name", ["0_zwx", "abc_zwx", "1.5_zwx", "-2_zwx"])
def test_bad_repeats(tmp_path: Path, make_image, name: str) -> None:
    make_image(tmp_path / name / "a.png", caption="x")
    message = _error(tmp_path)
    assert name in message
    assert "repeats" in message


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "10_x").mkdir()
    (tmp_path / "10_x" / "notes.md").write_text("hi")
    message = _error(tmp_path)
    assert "no images found" in message and str(tmp_path) in message and "10_x" in message


def test_images_at_top_level(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "loose.png", caption="x")
    message = _error(tmp_path)
    assert "loose.png" in message and "subfolder" in message


def test_duplicate_stems(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "1_x" / "a.jpg", caption="x")
    make_image(tmp_path / "1_x" / "a.png")
    message = _error(tmp_path)
    assert "'a.jpg'" in message and "'a.png'" in message and "1_x" in message


def test_truncated_jpeg(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "1_x" / "half.jpg", (128, 96), caption="x", noise_seed=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(tmp_path)
    assert "half.jpg" in message and "cannot be read" in message


def test_unreadable_image(tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    folder.mkdir()
    (folder / "fake.png").write_bytes(b"not an image at all")
    message = _error(tmp_path)
    assert "fake.png" in message


def test_non_utf8_caption(tmp_path: Path, make_image) -> None:
    img = make_image(tmp_path / "1_x" / "a.png")
    img.with_suffix(".txt").write_bytes("caf\u00e9, zwx".encode("cp1252"))
    message = _error(tmp_path)
    assert "a.txt" in message and "re-save it as UTF-8" in message


def test_all_problems_reported_at_once_and_capped(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "zwx" / "a.png", caption="x")
    bad = make_image(tmp_path / "1_y" / "b.png")
    bad.with_suffix(".txt").write_bytes(b"\xff\xfe")
    for i in range(MAX_LISTED_PROBLEMS + 5):
        (tmp_path / "1_y" / f"broken{i:02d}.png").write_bytes(b"junk")
    message = _error(tmp_path)
    assert f"has {MAX_LISTED_PROBLEMS + 7} problem(s)" in message
    assert "zwx" in message and "b.txt" in message  # first problems are listed
    assert "... and 7 more" in message


def test_exif_orientation_swaps_size(tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    Image.new("RGB", (120, 60), (0, 0, 255)).save(folder / "phone.jpg", exif=exif.tobytes())
    ds = scan_kohya_dataset(tmp_path)
    assert (ds.items[0].width, ds.items[0].height) == (60, 120)


def test_uncaptioned_image_in_folder_without_token_is_an_error(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "5_" / "a.png")  # fallback caption would be "": the image would train on nothing
    make_image(tmp_path / "5_" / "b.png", caption="zwx, smiling")
    message = _error(tmp_path)
    assert "a.png' has no .txt caption" in message and "`5_<token>`" in message
