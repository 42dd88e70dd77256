"""Dataset writers never overwrite their inputs: `dataset init | edit | sheet` and `toy dataset`,
through the CLI (exit 2, a message, the inputs byte-identical)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prep_support import tree_digest

from lorakiln.cli import main
from lorakiln.data.caption_target import ImageGuard
from lorakiln.io_guard import OverwriteInputError


@pytest.fixture
def photos(tmp_path: Path, noise_image) -> Path:
    src = tmp_path / "photos"
    noise_image(src / "a.png", (64, 64), caption="zwx, smiling")
    noise_image(src / "b.jpg", (64, 64))
    return src


@pytest.fixture
def dataset(tmp_path: Path, noise_image) -> Path:
    root = tmp_path / "train"
    noise_image(root / "10_zwx" / "a.png", (64, 64), caption="zwx, red")
    noise_image(root / "10_zwx" / "b.png", (64, 64), caption="zwx, blue")
    (root / "10_zwx" / "a.gif").write_bytes(b"GIF89a not trained on, still the user's file")
    return root


def _refused(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = tree_digest(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert tree_digest(folder) == before
    return err


@pytest.mark.parametrize("dest", ["same", "inside", "holds", "symlink"])
def test_init_refuses_a_destination_overlapping_the_source(photos: Path, tmp_path: Path, dest: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    target = {"same": photos, "inside": photos / "out", "holds": tmp_path, "symlink": tmp_path / "link"}[dest]
    if dest == "symlink":
        target.symlink_to(photos, target_is_directory=True)
    err = _refused(["dataset", "init", str(photos), "--token", "zwx", "--repeats", "2", "--dest", str(target)],
                   photos, capsys)
    assert "dataset init" in err or "inside the source" in err
    assert not (photos / "2_zwx").exists() and not (tmp_path / "2_zwx").exists()


def test_edit_refuses_an_image_caption_extension(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for ext in (".png", ".gif", ".TIF", "webp"):
        err = _refused(["dataset", "edit", str(dataset), "--add", "photo", "--caption-extension", ext], dataset, capsys)
        assert "would overwrite the images" in err


def test_edit_writes_only_caption_files_atomically(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = {k: v for k, v in tree_digest(dataset).items() if not k.endswith(".txt")}
    assert main(["dataset", "edit", str(dataset), "--add", "photo"]) == 0
    after = tree_digest(dataset)
    assert {k: v for k, v in after.items() if not k.endswith(".txt")} == images
    assert sorted(p.name for p in (dataset / "10_zwx").iterdir()) == ["a.gif", "a.png", "a.txt", "b.png", "b.txt"]
    assert (dataset / "10_zwx" / "a.txt").read_text(encoding="utf-8") == "zwx, red, photo"


def test_sheet_refuses_to_write_over_a_dataset_image(dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = dataset / "10_zwx" / "a.png"
    _refused(["dataset", "sheet", str(dataset), "-o", str(image)], dataset, capsys)
    link = tmp_path / "review.png"
    link.symlink_to(image)
    _refused(["dataset", "sheet", str(dataset), "-o", str(link)], dataset, capsys)
    link.unlink()
    os.link(image, link)  # a hard link: another name for the same file, outside the dataset
    err = _refused(["dataset", "sheet", str(dataset), "-o", str(link)], dataset, capsys)
    assert "one of the input images" in err
    link.unlink()
    assert main(["dataset", "sheet", str(dataset), "-o", str(link)]) == 0 and link.is_file()


def test_image_guard_matches_path_and_identity(dataset: Path, tmp_path: Path) -> None:
    image = dataset / "10_zwx" / "a.png"
    guard = ImageGuard([image, dataset / "10_zwx" / "b.png"])
    with pytest.raises(OverwriteInputError):
        guard.refuse(dataset / "10_zwx" / ".." / "10_zwx" / "a.png", verb="test")
    os.link(image, tmp_path / "other.txt")
    with pytest.raises(OverwriteInputError):
        guard.refuse(tmp_path / "other.txt", verb="test")
    guard.refuse(dataset / "10_zwx" / "a.txt", verb="test")  # a caption file: fine


def test_toy_dataset_refuses_a_folder_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "portrait.png").write_bytes(b"my own picture")
    err = _refused(["toy", "dataset", str(folder), "-n", "2"], folder, capsys)
    assert "already holds files" in err
    (tmp_path / "afile").write_bytes(b"x")
    assert "is a file" in _refused(["toy", "dataset", str(tmp_path / "afile"), "-n", "2"], tmp_path, capsys)
