"""Contact sheets: page size from the layout, page splits, red marking, EXIF orientation, CLI runner."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorakiln.data.contact_sheet import (
    MISSING,
    load_font,
    make_layout,
    thumbnail,
    wrap_text,
    write_contact_sheet,
)
from lorakiln.errors import ConfigError, DatasetError
from lorakiln.prep.caption_command import add_sheet_arguments, run_sheet

BLUE = (30, 60, 200)


def _folder(root: Path, make_image, count: int, *, uncaptioned: tuple[int, ...] = ()) -> Path:  # type: ignore[no-untyped-def]
    for i in range(count):
        caption = None if i in uncaptioned else f"zwx, photo number {i}, a man with black hair"
        make_image(root / "10_zwx" / f"img{i:02d}.png", (80, 50), caption=caption, color=BLUE)
    return root


def _red_pixels(array: np.ndarray) -> int:
    return int(np.all(array == np.array(MISSING, dtype=np.uint8), axis=-1).sum())


def test_single_page_size_matches_layout(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 5)
    paths = write_contact_sheet(root, tmp_path / "sheet.png", columns=3, thumb=64)
    assert paths == [tmp_path / "sheet.png"]
    layout, _ = make_layout(5, columns=3, thumb=64)
    assert layout.columns == 3 and layout.rows(5) == 2
    with Image.open(paths[0]) as img:
        assert img.format == "PNG"
        assert img.size == layout.page_size(5)
        width, height = img.size
    assert width == 3 * 64 + 4 * layout.padding
    assert height == layout.header_height + 2 * (layout.cell_height + layout.padding) + layout.padding


def test_fewer_images_than_columns_gives_a_narrow_sheet(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 2)
    (path,) = write_contact_sheet(root, tmp_path / "s.png", columns=6, thumb=64)
    layout, _ = make_layout(2, columns=6, thumb=64)
    with Image.open(path) as img:
        assert img.size == layout.page_size(2) and img.size[0] == 2 * 64 + 3 * layout.padding


def test_pages_split(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 5)
    out = tmp_path / "out" / "sheet.png"
    paths = write_contact_sheet(root, out, columns=2, thumb=48, max_per_page=2)
    assert [p.name for p in paths] == ["sheet-001.png", "sheet-002.png", "sheet-003.png"]
    assert not out.exists()
    paths = write_contact_sheet(root, out, columns=2, thumb=48, max_per_page=4)
    assert [p.name for p in paths] == ["sheet-001.png", "sheet-002.png"]
    layout, _ = make_layout(5, columns=2, thumb=48)
    sizes = []
    for path in paths:
        with Image.open(path) as img:
            sizes.append(img.size)
    assert sizes == [layout.page_size(4), layout.page_size(1)]
    assert sizes[1][0] == sizes[0][0] and sizes[1][1] < sizes[0][1]  # same width, one row instead of two


def test_missing_caption_is_marked_red(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 3, uncaptioned=(1,))
    (path,) = write_contact_sheet(root, tmp_path / "sheet.png", columns=3, thumb=64)
    layout, _ = make_layout(3, columns=3, thumb=64)
    array = np.asarray(Image.open(path).convert("RGB"))
    cells = []
    for index in range(3):
        x, y = layout.cell_origin(index)
        cells.append(array[y:y + layout.cell_height, x:x + layout.thumb])
    assert _red_pixels(cells[1]) > 4 * 64  # the frame around the thumbnail, plus "(no caption)"
    assert tuple(cells[1][0, 0]) == MISSING
    assert _red_pixels(cells[0]) == 0 and _red_pixels(cells[2]) == 0
    x, y = layout.cell_origin(0)
    assert tuple(array[y + 32, x + 32]) == BLUE  # the thumbnail is where the layout says


def test_thumbnail_follows_exif_orientation(tmp_path: Path) -> None:
    array = np.zeros((60, 120, 3), dtype=np.uint8)
    array[:, :60] = 255  # stored: left half white; orientation 6 displays it rotated 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "train" / "1_phone"
    folder.mkdir(parents=True)
    Image.fromarray(array).save(folder / "phone.jpg", exif=exif, quality=95)
    thumb = thumbnail(folder / "phone.jpg", 64)
    assert thumb is not None and thumb.size == (32, 64)
    pixels = np.asarray(thumb, dtype=np.float32)
    assert pixels[:28].mean() > 230 and pixels[36:].mean() < 25  # white on top: display orientation

    (path,) = write_contact_sheet(tmp_path / "train", tmp_path / "sheet.png", thumb=64)
    layout, _ = make_layout(1, columns=6, thumb=64)
    x, y = layout.cell_origin(0)
    sheet = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    cell = sheet[y:y + 64, x + 16:x + 48]  # the 32-px-wide thumbnail is centred in its square
    assert cell[:28].mean() > 230 and cell[36:].mean() < 25


def test_unreadable_image_and_caption_are_marked_not_raised(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "train"
    make_image(folder / "ok.png", caption="fine", color=BLUE)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "broken.txt").write_bytes(b"caf\xe9")
    (path,) = write_contact_sheet(folder, tmp_path / "sheet.png", thumb=64)
    layout, _ = make_layout(2, columns=6, thumb=64)
    x, y = layout.cell_origin(0)  # "broken.png" sorts first
    array = np.asarray(Image.open(path).convert("RGB"))
    assert _red_pixels(array[y:y + layout.cell_height, x:x + layout.thumb]) > 4 * 64


def test_wrap_text_fits_and_truncates() -> None:
    font = load_font(12)
    words = "a man with black hair and brown skin in an orange shirt " * 4
    lines = wrap_text(words, font, 100, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 100 for line in lines)
    long_tag = "x" * 200  # no spaces: broken between characters
    assert all(font.getlength(line) <= 100 for line in wrap_text(long_tag, font, 100, max_lines=10))
    assert wrap_text("short", font, 100, max_lines=2) == ["short"]


def test_output_checks(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 1)
    with pytest.raises(ConfigError, match="inside the dataset"):
        write_contact_sheet(root, root / "10_zwx" / "sheet.png")
    with pytest.raises(ConfigError, match=r"\.png"):
        write_contact_sheet(root, tmp_path / "sheet.gif")
    with pytest.raises(ConfigError, match="columns"):
        write_contact_sheet(root, tmp_path / "sheet.png", columns=0)
    assert write_contact_sheet(root, tmp_path / "noext") == [tmp_path / "noext.png"]
    (jpg,) = write_contact_sheet(root, tmp_path / "sheet.jpg", thumb=32)
    with Image.open(jpg) as img:
        assert img.format == "JPEG"


def test_missing_folder_and_no_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope"):
        write_contact_sheet(tmp_path / "nope", tmp_path / "s.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        write_contact_sheet(tmp_path / "empty", tmp_path / "s.png")


def test_run_sheet(tmp_path: Path, make_image, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    root = _folder(tmp_path / "train", make_image, 3)
    parser = argparse.ArgumentParser()
    add_sheet_arguments(parser)
    out = tmp_path / "review.png"
    args = parser.parse_args([str(root), "-o", str(out), "--columns", "2", "--thumb", "48",
                              "--caption-extension", "txt", "--per-page", "2"])
    assert run_sheet(args) == 0
    printed = capsys.readouterr().out
    assert "review-001.png" in printed and "review-002.png" in printed
    assert (tmp_path / "review-002.png").is_file()
