"""Toy-world datasets are written deterministically and scan cleanly with lorakiln's scanners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakiln.data import scan_dataset
from lorakiln.errors import DatasetError
from lorakiln.toyworld.dataset import MANIFEST, write_concept_dataset, write_world_dataset
from lorakiln.toyworld.world import caption, parse_caption, sample_scenes, train_pairs


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_imagefolder_layout(tmp_path: Path) -> None:
    root = write_world_dataset(tmp_path / "a", n=12, seed=4)
    assert (root / "00000.png").is_file() and (root / "metadata.jsonl").is_file()
    dataset = scan_dataset(root)
    assert len(dataset.subsets) == 1 and len(dataset.subsets[0].items) == 12
    assert not dataset.scan_warnings
    scenes = sample_scenes(12, seed=4)
    by_name = {item.path.name: item for item in dataset.subsets[0].items}
    for index, scene in enumerate(scenes):
        item = by_name[f"{index:05d}.png"]
        assert item.caption == caption(scene) and (item.width, item.height) == (64, 64)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"file_name", "prompt"}


def test_kohya_layout(tmp_path: Path) -> None:
    root = write_world_dataset(tmp_path / "k", n=6, seed=1, layout="kohya", repeats=3, size=32)
    assert (root / "3_world" / "00000.png").is_file() and (root / "3_world" / "00000.txt").is_file()
    dataset = scan_dataset(root)
    (subset,) = dataset.subsets
    assert subset.repeats == 3 and len(subset.items) == 6 and not dataset.scan_warnings
    assert all((item.width, item.height) == (32, 32) for item in subset.items)
    assert all((parse_caption(item.caption)[0], parse_caption(item.caption)[1]) in train_pairs()
               for item in subset.items)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for layout in ("imagefolder", "kohya"):
        a = write_world_dataset(tmp_path / f"{layout}1", n=5, seed=7, layout=layout)  # type: ignore[arg-type]
        b = write_world_dataset(tmp_path / f"{layout}2", n=5, seed=7, layout=layout)  # type: ignore[arg-type]
        assert _files(a) == _files(b)
    c = write_world_dataset(tmp_path / "other", n=5, seed=8)
    assert _files(c) != _files(tmp_path / "imagefolder1")


def test_manifest_holds_the_scenes(tmp_path: Path) -> None:
    root = write_world_dataset(tmp_path / "m", n=4, seed=2, split="heldout", layout="kohya")
    rows = [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]
    scenes = sample_scenes(4, seed=2, split="heldout")
    assert [r["file_name"] for r in rows] == [f"1_world/{i:05d}.png" for i in range(4)]
    assert [r["scene"]["shape"] for r in rows] == [s.shape for s in scenes]
    assert [r["caption"] for r in rows] == [caption(s) for s in scenes]


def test_concept_dataset(tmp_path: Path) -> None:
    root = write_concept_dataset(tmp_path / "c", n=10, seed=0, repeats=10)
    dataset = scan_dataset(root)
    (subset,) = dataset.subsets
    assert subset.path.name == "10_zwx" and subset.repeats == 10 and subset.token == "zwx"
    assert len(subset.items) == 10 and not dataset.scan_warnings
    assert all(item.caption.startswith("a zwx on a ") for item in subset.items)


def test_refuses_non_empty_folder_and_bad_options(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already holds files"):
        write_world_dataset(tmp_path / "full", n=1, seed=0)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="repeats"):
        write_world_dataset(tmp_path / "if", n=1, seed=0, repeats=2)
    with pytest.raises(ValueError, match="layout"):
        write_world_dataset(tmp_path / "x", n=1, seed=0, layout="webdataset")  # type: ignore[arg-type]
