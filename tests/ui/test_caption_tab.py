"""The Caption tab's handler: BLIP and WD14 settings reach the captioners, existing captions are
kept unless overwrite is ticked, bad settings come back as messages naming the field, and a
model that is not on this machine fails in seconds with a message saying where to put it."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.captioning.blip import DEFAULT_BLIP_MODEL, BlipOptions
from lorakiln.captioning.tagger import DEFAULT_TAGGER_MODEL, TaggerOptions
from lorakiln.ui.caption_tab import SETTINGS, caption, caption_models, model_choices
from lorakiln.ui.sandbox import Sandbox
from lorakiln.ui.wording import no_flags


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
    assert '"max length" 10 is below "min length" 50' in report and no_flags(report)
    report = caption(_box(tmp_path, tiny_blip), *_settings(method="tagger", general_threshold=2.0))
    assert 'error: "threshold" is a probability' in report
    outside = tmp_path.parent / f"{tmp_path.name}-models"
    outside.mkdir()
    report = caption(_box(tmp_path, tiny_blip), *_settings(model=str(outside)))
    assert report.startswith("error") and "outside the folders this UI may read" in report
    assert "the server's models folders (set when the UI was started)" in report and no_flags(report)
    report = caption(_box(tmp_path, tiny_blip), *_settings(model=str(tmp_path / "nope") + "/"))
    assert "the caption model field" in report and "no such folder" in report and no_flags(report)
    report = caption(_box(tmp_path, tiny_blip), *_settings(model=str(tiny_blip)))  # blue.txt is kept
    assert 'tick "overwrite existing captions"' in report and no_flags(report)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("method", "how"), [("blip", "offline"), ("blip", "closed port"), ("tagger", "closed port")])
def test_a_missing_model_fails_in_seconds_in_ui_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      method: str, how: str) -> None:
    """No internet, no weights: within seconds (not minutes of hub retries) the tab says which
    model is missing, that the hub cannot be reached, and where to copy the model — never a CLI flag."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    project, models = tmp_path / "project", tmp_path / "models"
    _dataset(project)
    models.mkdir()
    start = time.monotonic()
    report = caption(Sandbox.for_project(project, model=[models]), *_settings(method=method))
    assert time.monotonic() - start < 10
    model = DEFAULT_BLIP_MODEL if method == "blip" else DEFAULT_TAGGER_MODEL
    error = report.splitlines()[-1]
    assert error.startswith(f"error: the {'BLIP' if method == 'blip' else 'WD14 tagger'} model {model} is not on "
                            "this machine"), report
    assert "cannot reach the Hugging Face hub" in error and str(models) in error and str(project) in error
    assert "caption model field" in error and no_flags(report), report
    assert not (project / "train" / "10_zwx" / "red.txt").exists()


def test_the_model_field_lists_model_folders(tmp_path: Path, tiny_blip: Path, tiny_tagger: Path) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    shutil.copytree(tiny_blip, models / "blip-large")
    shutil.copytree(tiny_tagger, models / "taggers" / "wd14")
    shutil.copytree(tiny_blip, elsewhere / "blip")
    (models / "lora-folder").mkdir()  # no model in it
    project = tmp_path / "project"
    _dataset(project)
    (project / "escape").symlink_to(elsewhere)  # a symlink out of the folders is not offered
    box = Sandbox.for_project(project, model=[models])
    listed = dict((value, label) for label, value in caption_models(box))
    assert sorted(listed) == [str(models / "blip-large"), str(models / "taggers" / "wd14")]
    assert listed[str(models / "blip-large")].startswith("blip-large")
    assert model_choices(box)[0] == ("default model of the method", "")
    report = caption(box, *_settings(model=str(models / "blip-large")))  # what the drop-down sends
    assert "captioned 1 image" in report, report
