"""The Dataset tab's handlers: imports (folder and uploads), captions, and the two reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lorakiln.ui import dataset_tab as tab
from lorakiln.ui.sandbox import Sandbox


def photos(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = Image.new("RGB", (96, 96), (60 + 60 * i, 120, 200))
        ImageDraw.Draw(img).ellipse([10 + 10 * i, 12, 44, 46], fill=(140, 60, 170))
        img.save(folder / f"p{i}.png")
        out.append(folder / f"p{i}.png")
    return out


def test_import_from_a_folder_reads_the_source_only(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    photos(src)
    (src / "p0.txt").write_text("photo of zwx", encoding="utf-8")
    before = sorted(p.name for p in src.iterdir())
    box = Sandbox.for_project(tmp_path / "proj", data=[src])  # `lorakiln ui --data-dir photos`
    msg = tab.import_from_path(box, str(src), "zwx", "man", "2")
    assert "3 image(s)" in msg and "token 'zwx'" in msg
    folder = tmp_path / "proj" / "train" / "2_zwx man"
    assert sorted(p.name for p in folder.iterdir()) == ["p0.png", "p0.txt", "p1.png", "p2.png"]
    assert sorted(p.name for p in src.iterdir()) == before
    again = tab.import_from_path(box, str(src), "zwx", "man", "2")
    assert again.startswith("error:") and "not empty" in again  # never overwrites
    assert tab.import_from_path(box, "", "zwx").startswith("error:")
    assert "whole number" in tab.import_from_path(box, str(src), "zwx", "", "many")
    photos(tmp_path / "elsewhere")  # not a --data-dir: refused, nothing imported
    msg = tab.import_from_path(box, str(tmp_path / "elsewhere"), "other", "", "2")
    assert msg.startswith("error:") and "the server's photo folders" in msg
    assert not (box.project / "train" / "2_other").exists()
    for word, other in (("../../zwx", ""), ("zwx", "../man"), ("a/b", ""), (".hidden", "")):
        msg = tab.import_from_path(box, str(src), word, other, "3")
        assert msg.startswith("error:") and "contains a path" in msg, msg
    assert sorted(p.name for p in (box.project / "train").iterdir()) == ["2_zwx man"]


def test_uploads_are_checked_first_and_a_non_image_refuses_the_batch(tmp_path: Path) -> None:
    up = tmp_path / "gradio-tmp"
    images = photos(up, 2)
    fake = up / "holiday.jpg"
    fake.write_text("not a picture", encoding="utf-8")
    notes = up / "notes.txt"
    notes.write_text("hello", encoding="utf-8")
    project = tmp_path / "proj"
    box = Sandbox.for_project(project)
    for bad in (fake, notes):
        msg = tab.import_uploads(box, [str(images[0]), str(bad), str(images[1])], "zwx", "", "3")
        assert msg.startswith("error:") and bad.name in msg and "nothing was imported" in msg
        assert not (project / "train").exists()
    msg = tab.import_uploads(box, [str(p) for p in images], "zwx", "", "3")
    assert "2 image(s)" in msg, msg
    assert sorted(p.name for p in (project / "train" / "3_zwx").iterdir()) == ["p0.png", "p1.png"]
    assert tab.import_uploads(box, [], "zwx").startswith("error:")
    named = up / "sub"
    named.mkdir()
    photos(named, 1)  # gradio keeps an upload's own name; a name with a path keeps only its last part
    msg = tab.import_uploads(box, [str(named / "p0.png"), str(images[0])], "two", "", "1")
    assert sorted(p.name for p in (project / "train" / "1_two").iterdir()) == ["p0-1.png", "p0.png"], msg


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A project whose dataset has one captioned image (with the token), one without, one off-token."""
    sub = tmp_path / "proj" / "train" / "2_zwx"
    images = photos(sub)
    images[0].with_suffix(".txt").write_text("photo of zwx", encoding="utf-8")
    images[1].with_suffix(".txt").write_text("photo of a man", encoding="utf-8")
    return tmp_path / "proj"


def test_caption_select_edit_save_and_read_back(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items, paths = tab.gallery(Sandbox.for_project(dataset))
    assert [Path(p).name for p in paths] == ["p0.png", "p1.png", "p2.png"]
    assert items[0][1] == "p0.png: photo of zwx" and items[2][1] == "p2.png: "
    image, caption, msg = tab.select_image(paths, 1)
    assert (Path(image).name, caption, msg) == ("p1.png", "photo of a man", "")
    assert tab.save_caption(Sandbox.for_project(dataset), image, "photo of zwx, a man ").startswith("saved")
    assert tab.read_caption(image) == "photo of zwx, a man"
    assert tab.select_image(paths, 2)[1] == ""  # no caption yet
    assert tab.save_caption(Sandbox.for_project(dataset), paths[2], "zwx smiling").startswith("saved")
    assert tab.gallery(Sandbox.for_project(dataset))[0][2][1] == "p2.png: zwx smiling"
    assert tab.select_image(paths, 7)[2] and tab.save_caption(Sandbox.for_project(dataset), "", "x").startswith("error")
    outside = dataset.parent / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    assert "not an image of this project" in tab.save_caption(Sandbox.for_project(dataset), str(outside), "x")

    import lorakiln.atomic as atomic

    def failing_write(dest: Path, text: str) -> None:  # the disk fills up mid-write
        with atomic.atomic_path(dest) as tmp:
            tmp.write_text(text[:3], encoding="utf-8")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_text_atomic", failing_write)
    msg = tab.save_caption(Sandbox.for_project(dataset), image, "a new caption that is lost")
    assert msg.startswith("error:") and "old caption is kept" in msg
    assert tab.read_caption(image) == "photo of zwx, a man"
    assert sorted(p.name for p in Path(image).parent.iterdir() if p.name.startswith(".")) == []


def test_check_and_token_reports_name_the_problems(dataset: Path) -> None:
    report = tab.check_report(Sandbox.for_project(dataset), "zwx")
    assert "3 image(s)" in report and "caption-without-token" in report and "p1.png" in report
    assert "missing-caption" in report and "p2.png" in report and "total steps" in report
    assert "error" in tab.check_report(Sandbox.for_project(dataset.parent / "empty"), "zwx")
    assert "ok" in tab.token_report("zwx")
    common = tab.token_report("dog")
    assert "warning" in common and "common word" in common
    assert tab.token_report(" ") == "enter a trigger word"
