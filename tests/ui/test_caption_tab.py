"""The Caption tab's handler: BLIP and WD14 settings reach the captioners, existing captions are
kept unless overwrite is ticked, and bad settings come back as messages naming the option."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lorakiln.captioning.blip import BlipOptions
from lorakiln.captioning.tagger import TaggerOptions
from lorakiln.ui.caption_tab import SETTINGS, caption
from lorakiln.ui.sandbox import Sandbox


def _settings(**changes: object) -> list[object]:
    blip, tagger = BlipOptions(), TaggerOptions()
    values = {"method": "blip", "model": "", "prefix": "", "postfix": "", "overwrite": False, "batch_size": 1,
              "num_beams": blip.num_beams, "min_length": blip.min_length, "max_length": blip.max_length,
              "sample": blip.sample, "top_p": blip.top_p, "text_prompt": blip.text_prompt,
              "general_threshold": tagger.general_threshold, "character_threshold": tagger.character_threshold,
              "exclude_tags": "", "replace_underscores": True, "include_rating": False, "sort_by_confidence": False,
              "tag_separator": ", "} | changes
    return [values[k] for k in SETTINGS]


def _box(project: Path, model: Path) -> Sandbox:
    """The project, with the test's caption model folder as a --models-dir."""
    return Sandbox.for_project(project, model=[model])


def _dataset(project: Path) -> Path:
    folder = project / "train" / "10_zwx"
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(folder / "blue.png")
    (folder / "blue.txt").write_text("my own caption", encoding="utf-8")
    return folder


def test_tagger_with_prefix_keeps_existing_captions(tmp_path: Path, tiny_tagger: Path) -> None:
    folder = _dataset(tmp_path)
    report = caption(_box(tmp_path, tiny_tagger), *_settings(method="tagger", model=str(tiny_tagger), prefix="zwx, ",
                                               exclude_tags="solo"))
    assert "captioned 1 image" in report and "kept 1 existing caption" in report, report
    assert (folder / "red.txt").read_text(encoding="utf-8").strip() == "zwx, long hair, hatsune miku"
    assert (folder / "blue.txt").read_text(encoding="utf-8") == "my own caption"  # never lost
    report = caption(_box(tmp_path, tiny_tagger), *_settings(method="tagger", model=str(tiny_tagger), overwrite=True))
    assert "captioned 2 images" in report
    assert (folder / "blue.txt").read_text(encoding="utf-8").strip() == "blue sky"


def test_blip_lengths_reach_the_model(tmp_path: Path, tiny_blip: Path) -> None:
    folder = _dataset(tmp_path)
    caption(_box(tmp_path, tiny_blip), *_settings(model=str(tiny_blip), min_length=7, num_beams=2.0, postfix=", photo"))
    text = (folder / "red.txt").read_text(encoding="utf-8").strip()
    assert text.endswith(", photo") and len(text.removesuffix(", photo").split()) == 7 - 4  # 4 prompt tokens


def test_errors_are_messages(tmp_path: Path, tiny_blip: Path, tiny_tagger: Path) -> None:
    assert "import images in the Dataset tab first" in caption(_box(tmp_path, tiny_blip), *_settings())
    _dataset(tmp_path)
    report = caption(_box(tmp_path, tiny_blip), *_settings(model=str(tiny_blip), min_length=50, max_length=10))
    assert report.startswith("error") or "\nerror: " in report
    assert "--max-length 10 is below --min-length 50" in report
    assert "error: --threshold" in caption(_box(tmp_path, tiny_blip), *_settings(method="tagger", general_threshold=2.0))
    outside = tmp_path.parent / f"{tmp_path.name}-models"
    outside.mkdir()
    report = caption(_box(tmp_path, tiny_blip), *_settings(model=str(outside)))
    assert report.startswith("error") and "outside the folders this UI may read" in report and "--models-dir" in report
