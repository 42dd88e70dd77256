"""`lorakiln caption` through its argparse front end, for both methods."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from captioning_support import BLIP_PRIMED_TOKENS, MakeImage

from lorakiln.captioning.command import add_arguments, run
from lorakiln.errors import ConfigError, DatasetError, ModelLoadError


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lorakiln caption")
    add_arguments(parser)
    return run(parser.parse_args([*argv, "--no-progress"]))


@pytest.fixture
def subject(tmp_path: Path, make_image: MakeImage) -> Path:
    root = tmp_path / "train"
    make_image(root / "15_anantn" / "a.png", (32, 32), (255, 0, 0))
    make_image(root / "15_anantn" / "b.jpg", (32, 16), (0, 0, 255))
    return root


def test_blip_seed_settings(tiny_blip_dir: Path, subject: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The kohya_ss walkthrough's BLIP settings: prefix "photo of <token>, ", 10 beams, min length 25."""
    rc = _run(str(subject), "--model", str(tiny_blip_dir), "--prefix", "photo of anantn, ", "--num-beams", "10",
              "--min-length", "25", "--caption-extension", "txt")
    assert rc == 0
    for stem in ("a", "b"):
        caption = (subject / "15_anantn" / f"{stem}.txt").read_text(encoding="utf-8").strip()
        assert caption.startswith("photo of anantn, ")
        assert len(caption.removeprefix("photo of anantn, ").split()) == 25 - BLIP_PRIMED_TOKENS
    out = capsys.readouterr().out
    assert "2 images in" in out and "captioned 2 images (.txt files next to the images)" in out

    assert _run(str(subject), "--model", str(tiny_blip_dir)) == 0
    assert "captioned 0 images" in capsys.readouterr().out.splitlines()[-1]


def test_blip_metadata_and_overwrite(tiny_blip_dir: Path, subject: Path) -> None:
    assert _run(str(subject), "--model", str(tiny_blip_dir), "--metadata", "--caption-column", "text",
                "--sample", "--seed", "3", "--top-p", "0.5") == 0
    rows = [json.loads(x) for x in (subject / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["file_name"] for r in rows] == ["15_anantn/a.png", "15_anantn/b.jpg"]
    assert all(set(r) == {"file_name", "text"} for r in rows)
    assert _run(str(subject), "--model", str(tiny_blip_dir), "--metadata", "--caption-column", "text",
                "--overwrite", "--prefix", "zwx") == 0
    rows = [json.loads(x) for x in (subject / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(r["text"].startswith("zwx ") for r in rows)


def test_tagger(tiny_wd14_dir: Path, subject: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run(str(subject), "--method", "tagger", "--model", str(tiny_wd14_dir), "--prefix", "anantn",
              "--threshold", "0.7", "--exclude-tags", "hatsune_miku", "--include-rating", "--batch-size", "2")
    assert rc == 0
    assert (subject / "15_anantn" / "a.txt").read_text(encoding="utf-8") == "anantn, general, long hair\n"
    # b.jpg is 2:1 blue, padded with white: blue sky fires, and ^_^ (green mean .5) too
    assert (subject / "15_anantn" / "b.txt").read_text(encoding="utf-8") == "anantn, explicit, blue sky, ^_^\n"
    assert "captioned 2 images" in capsys.readouterr().out

    with pytest.raises(DatasetError, match="drop --no-recursive to look in subfolders"):
        _run(str(subject), "--method", "tagger", "--model", str(tiny_wd14_dir), "--no-recursive")
    sub = subject / "15_anantn"
    assert _run(str(sub), "--method", "tagger", "--model", str(tiny_wd14_dir), "--overwrite",
                "--no-underscore-replace", "--sort-by-confidence", "--tag-separator", " ",
                "--character-threshold", "0.5", "--no-recursive") == 0
    assert (sub / "a.txt").read_text(encoding="utf-8") == "long_hair hatsune_miku solo\n"


def test_unreadable_image_gives_exit_status_1(tiny_wd14_dir: Path, subject: Path, make_image: MakeImage,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    make_image(subject / "15_anantn" / "c.png", broken=True)
    assert _run(str(subject), "--method", "tagger", "--model", str(tiny_wd14_dir)) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "15_anantn/c.png: cannot be read" in out
    assert (subject / "15_anantn" / "a.txt").exists()


def test_flags_of_the_other_method_are_refused(subject: Path) -> None:
    with pytest.raises(ConfigError, match=r"--num-beams, --sample only apply to --method blip"):
        _run(str(subject), "--method", "tagger", "--num-beams", "10", "--sample")
    with pytest.raises(ConfigError, match=r"--threshold only apply to --method tagger"):
        _run(str(subject), "--threshold", "0.5")
    with pytest.raises(ConfigError, match="--caption-column applies to --metadata only"):
        _run(str(subject), "--caption-column", "text")
    with pytest.raises(ConfigError, match="--caption-extension does not apply with --metadata"):
        _run(str(subject), "--metadata", "--caption-extension", ".txt")


def test_missing_model_and_folder(subject: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not download the BLIP model 'nobody/blip' .*offline"):
        _run(str(subject), "--model", "nobody/blip", "--device", "cpu")
    with pytest.raises(ModelLoadError, match="no such folder"):
        _run(str(subject), "--method", "tagger", "--model", "./models/wd14")
    with pytest.raises(DatasetError, match="does not exist"):
        _run(str(subject / "nope"))
