"""ImageFolder datasets (metadata.jsonl / metadata.csv), the layout dispatcher and dataset_name."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.data import Dataset, detect_layout, load_hub_dataset, scan_dataset, scan_imagefolder
from lorakiln.data.hub import MARKER
from lorakiln.errors import ConfigError, DatasetError


def _jsonl(folder: Path, rows: list[dict] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path = folder / "metadata.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def icons(tmp_path: Path, make_image) -> Path:
    """Three images (one portrait) in an ImageFolder with a `prompt` column, as the diffusers recipe's 3d_icon."""
    root = tmp_path / "3d_icon"
    make_image(root / "a.png", (96, 64))
    make_image(root / "b.jpg", (90, 60))
    make_image(root / "sub" / "c.png", (64, 96))
    _jsonl(root, [{"file_name": "a.png", "prompt": "an icon of TOK, red, small"},
                  {"file_name": "b.jpg", "prompt": "an icon of TOK, blue"},
                  {"file_name": "sub/c.png", "prompt": "an icon of TOK, red", "extra": 1}])
    return root


def _error(root: Path, **options) -> str:
    with pytest.raises(DatasetError) as info:
        scan_imagefolder(root, **options)
    return str(info.value)


def test_jsonl_captions_sizes_and_metadata(icons: Path) -> None:
    ds = scan_imagefolder(icons, repeats=3)
    assert isinstance(ds, Dataset) and len(ds.subsets) == 1
    assert [(it.path.relative_to(icons).as_posix(), it.caption) for it in ds.items] == [
        ("a.png", "an icon of TOK, red, small"), ("b.jpg", "an icon of TOK, blue"), ("sub/c.png", "an icon of TOK, red")]
    assert (ds.items[2].width, ds.items[2].height) == (64, 96)
    assert ds.num_images == 3 and ds.num_repeated_images == 9  # diffusers `--repeats`: images repeated, then shuffled
    assert ds.caption_extension == "metadata.jsonl" and ds.num_missing_captions == 0
    assert ds.dataset_dirs_info() == {"3d_icon": {"n_repeats": 3, "img_count": 3}}
    assert ds.tag_frequency() == {"3d_icon": {"an icon of TOK": 3, "red": 2, "small": 1, "blue": 1}}


def test_repeats_reach_the_batches(icons: Path) -> None:
    from lorakiln.data import BucketManager, TrainData

    data = TrainData(scan_imagefolder(icons, repeats=4), batch_size=1,
                     buckets=BucketManager((96, 96), min_bucket_reso=32, max_bucket_reso=192, reso_steps=32))
    assert data.steps_breakdown().samples_per_epoch == 12 == len(data.epoch_batches(0))


def test_csv_with_bom_quotes_and_custom_column(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_bytes(
        '\ufefffile_name,text\na.png,"TOK, red, ""quoted"""\n\nb.png,TOK blue\n'.encode())
    ds = scan_imagefolder(tmp_path, caption_column="text")
    assert [it.caption for it in ds.items] == ['TOK, red, "quoted"', "TOK blue"]
    assert ds.caption_extension == "metadata.csv"


def test_no_metadata_uses_instance_prompt(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.webp")
    ds = scan_imagefolder(tmp_path, instance_prompt="photo of TOK dog")
    assert [it.caption for it in ds.items] == ["photo of TOK dog"] * 2
    assert ds.subsets[0].fallback_caption == "photo of TOK dog"


def test_no_metadata_and_no_instance_prompt_names_both_fixes(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    message = _error(tmp_path)
    assert str(tmp_path) in message and "metadata.jsonl" in message and "instance_prompt" in message


def test_caption_column_none_or_file_name_only_uses_instance_prompt(icons: Path, tmp_path: Path,
                                                                    make_image) -> None:
    ds = scan_imagefolder(icons, caption_column=None, instance_prompt="TOK")
    assert {it.caption for it in ds.items} == {"TOK"}
    assert scan_imagefolder(icons, caption_column="", instance_prompt="TOK").items[0].caption == "TOK"
    root = tmp_path / "listed"
    make_image(root / "a.png")
    make_image(root / "b.png")  # not listed: ignored with a warning
    _jsonl(root, [{"file_name": "a.png"}])
    ds = scan_imagefolder(root, instance_prompt="TOK")
    assert [it.path.name for it in ds.items] == ["a.png"]


def test_empty_caption_falls_back_with_one_warning(tmp_path: Path, make_image, caplog) -> None:
    for name in "abc":
        make_image(tmp_path / f"{name}.png")
    _jsonl(tmp_path, [{"file_name": "a.png", "prompt": "TOK red"}, {"file_name": "b.png", "prompt": ""},
                      {"file_name": "c.png", "prompt": None}])
    assert "line 2" in _error(tmp_path) and "line 3" in _error(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        ds = scan_imagefolder(tmp_path, instance_prompt="TOK")
    assert [it.caption for it in ds.items] == ["TOK red", "TOK", "TOK"]
    assert ds.num_missing_captions == 2
    warnings = [r.getMessage() for r in caplog.records if "caption" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 image(s)") and "instance_prompt 'TOK'" in warnings[0]


def test_missing_caption_column_lists_columns_and_nearest(icons: Path) -> None:
    message = _error(icons, caption_column="promt")
    assert "metadata.jsonl has no column 'promt'" in message
    assert "'file_name', 'prompt', 'extra'" in message and "did you mean caption_column = 'prompt'?" in message
    assert "did you mean" in _error(icons, image_column="filename")


def test_bad_json_lines_named_by_line(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    _jsonl(tmp_path, [{"file_name": "a.png", "prompt": "x"}, "{'file_name': 'b.png'}", "", '["a.png"]'])
    message = _error(tmp_path)
    assert "has 2 problem(s)" in message
    assert "metadata.jsonl line 2 is not valid JSON" in message and "column 2" in message
    assert "metadata.jsonl line 4 is a JSON list, not an object" in message


def test_row_problems_all_reported(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "photo_01.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("x")
    _jsonl(tmp_path, [{"file_name": "photo_1.png", "prompt": "x"}, {"file_name": "broken.png", "prompt": "x"},
                      {"file_name": "notes.txt", "prompt": "x"}, {"prompt": "no file"},
                      {"file_name": "../escape.png", "prompt": "x"}, {"file_name": "photo_01.png", "prompt": 3},
                      {"file_name": "photo_01.png", "prompt": "again"}])
    message = _error(tmp_path)
    assert "line 1 names 'photo_1.png', which does not exist" in message and "did you mean 'photo_01.png'" in message
    assert "broken.png' cannot be read" in message
    assert "line 3: 'notes.txt' is not a .jpg" in message
    assert "line 4 has no 'file_name' value" in message
    assert "line 5: '../escape.png' must be a path inside" in message
    assert "line 6: 'prompt' is a int, not text" in message
    assert "lines 6 and 7 both name 'photo_01.png'" in message


def test_csv_problems(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,prompt\na.png,TOK, red\n", encoding="utf-8")
    message = _error(tmp_path)
    assert "metadata.csv line 2 has 3 field(s) but the header has 2" in message and "quote" in message
    (tmp_path / "metadata.csv").write_text("file_name,file_name\n", encoding="utf-8")
    assert "metadata.csv line 1" in _error(tmp_path)
    (tmp_path / "metadata.csv").write_text("", encoding="utf-8")
    assert "metadata.csv is empty" in _error(tmp_path)


def test_both_metadata_files_and_bad_repeats(icons: Path) -> None:
    (icons / "metadata.csv").write_text("file_name,prompt\na.png,x\n", encoding="utf-8")
    assert "both metadata.jsonl and metadata.csv" in _error(icons)
    with pytest.raises(ConfigError, match="repeats"):
        scan_imagefolder(icons, repeats=0)


def test_non_utf8_metadata(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "prompt": "ok"}\n{"prompt": "\xff"}\n')
    assert "metadata.jsonl line 2 is not UTF-8" in _error(tmp_path)


# -- dispatcher --------------------------------------------------------------------------


def test_dispatcher_picks_each_layout(icons: Path, simple_dataset: Path, tmp_path: Path, make_image) -> None:
    assert detect_layout(icons) == "imagefolder"
    assert detect_layout(simple_dataset) == "kohya"
    assert scan_dataset(simple_dataset, repeats=1).num_repeated_images == 10
    assert scan_dataset(icons, repeats=2).num_repeated_images == 6
    flat = tmp_path / "flat"
    make_image(flat / "a.png")
    assert detect_layout(flat) == "imagefolder"
    assert scan_dataset(flat, instance_prompt="TOK").items[0].caption == "TOK"


def test_dispatcher_neither_layout_explains_both(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "dogs" / "a.png")
    with pytest.raises(DatasetError) as info:
        scan_dataset(tmp_path)
    message = str(info.value)
    assert "neither a kohya folder nor an ImageFolder" in message and "'dogs'" in message
    assert "`10_dogs`" in message and "metadata.jsonl" in message
    (tmp_path / "dogs" / "a.png").unlink()
    (tmp_path / "dogs").rmdir()
    with pytest.raises(DatasetError, match="it is empty"):
        scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="dataset_name"):
        scan_dataset("LinoyTsaban/3d_icon")


# -- dataset_name (Hub) ------------------------------------------------------------------


@pytest.fixture
def hub_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub answers (these tests fake `datasets`; the machine itself has no internet)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("lorakiln.models.hub_access.hub_unreachable", lambda *a, **k: None)


def test_unreachable_hub_fails_at_once_with_the_offline_advice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setitem(sys.modules, "datasets", None)  # never reached: the probe answers first
    began = time.monotonic()
    with pytest.raises(DatasetError, match="cannot be reached") as err:
        load_hub_dataset("LinoyTsaban/3d_icon", tmp_path / "hub")
    assert time.monotonic() - began < 10
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "data.train_data_dir" in str(err.value)
    assert not (tmp_path / "hub").exists()


@pytest.mark.usefixtures("hub_up")
def test_hub_without_datasets_package_explains(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DatasetError, match="pip install datasets"):
        load_hub_dataset("LinoyTsaban/3d_icon", tmp_path / "hub")


class _FakeTable(list):
    column_names = ["image", "prompt"]


@pytest.mark.usefixtures("hub_up")
def test_hub_dataset_materialised_once(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []

    def load_dataset(name: str, split: str, revision: str | None) -> _FakeTable:
        calls.append(name)
        return _FakeTable([{"image": Image.new("RGB", (64, 48), (i * 50, 0, 0)), "prompt": f"TOK {i}"}
                           for i in range(3)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    dest = tmp_path / "hub"
    ds = load_hub_dataset("LinoyTsaban/3d_icon", dest, repeats=2)
    assert [it.caption for it in ds.items] == ["TOK 0", "TOK 1", "TOK 2"] and ds.num_repeated_images == 6
    assert json.loads((dest / MARKER).read_text())["rows"] == 3
    monkeypatch.setitem(sys.modules, "datasets", None)  # a second run works offline
    assert load_hub_dataset("LinoyTsaban/3d_icon", dest).num_images == 3
    assert calls == ["LinoyTsaban/3d_icon"]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DatasetError, match="did you mean 'prompt'"):
        load_hub_dataset("other/name", tmp_path / "hub2", caption_column="prompts")
