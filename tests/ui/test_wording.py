"""No CLI flag reaches the browser: `ui_words` translates the flags of the package's messages into
the tabs' field names, every tab's typical error comes back without one, and no label, info text
or placeholder of a tab names one."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import lorakiln.ui
from lorakiln.ui import dataset_tab, generate_tab
from lorakiln.ui.sandbox import Sandbox
from lorakiln.ui.wording import missing_model_words, no_flags, ui_words

UI = Path(lorakiln.ui.__file__).parent


@pytest.mark.parametrize(("message", "expected"), [
    ("/p/out.safetensors exists; pass --force to overwrite it", '/p/out.safetensors exists; tick "overwrite" to '
     "replace it"),
    ("captioned 1 image (x), kept 2 existing captions (use --overwrite to replace)",
     'captioned 1 image (x), kept 2 existing captions (tick "overwrite existing captions" to replace them)'),
    ("--max-length 10 is below --min-length 50; raise --max-length", '"max length" 10 is below "min length" 50; '
     'raise "max length"'),
    ("let `lorakiln dataset init --repeats auto` pick them", 'let repeats "auto" (Dataset tab) pick them'),
    ("--repeats 0 must be a whole number", 'repeats "0" must be a whole number'),
    ("Choose another --dest, or move that folder away first", "Choose another trigger word, class word or repeats, "
     "or move that folder away first"),
    ("LoRA 'x' resolves to /o/x, outside the folders this UI may read (/p); move or copy it into the project, or "
     "start `lorakiln ui` with --lora-dir /o", "LoRA 'x' resolves to /o/x, outside the folders this UI may read (/p); "
     "move or copy it into the project, or into one of the server's LoRA folders (set when the UI was started)"),
    ("the prompt uses <lora:x:…> but no --lora-dir was given", "the prompt uses <lora:x:…> but no LoRA folder was "
     "picked"),
    ("x is a diffusers-format LoRA; `lora resize` reads kohya files. Convert it first: lorakiln lora convert /p/x.s "
     "x_kohya.safetensors --to kohya", "x is a diffusers-format LoRA; the Tools tab's resize reads kohya files. "
     'Convert it first: the Tools tab\'s convert ("to": kohya)'),
    ("--to checkpoint needs --model BASE (the checkpoint)", '"to" checkpoint needs "base model" (the checkpoint)'),
    ("Pass a local folder with --model", "Pass a local folder with the caption model field"),
    ("restart the UI with --allow-pickle on a trusted machine", "restart the UI server with pickle loading allowed on "
     "a trusted machine"),
    ("resume it with --resume; try --some-new-flag", 'resume it with the resume button; try "some new flag"'),
    ("file my--weird-name.png and a-- b", "file my--weird-name.png and a-- b"),  # not flags
])
def test_ui_words(message: str, expected: str) -> None:
    assert ui_words(message) == expected
    assert no_flags(ui_words(message))


def test_the_model_field_depends_on_the_tab() -> None:
    assert ui_words("use it as a base model (--model)", model_field="base model") == (
        "use it as a base model (the base model field)")


def test_missing_model_words_name_no_flag(tmp_path: Path) -> None:
    from lorakiln.captioning.model_source import ModelUnavailable

    err = ModelUnavailable(repo_id="org/m", what="BLIP", reason="HF_HUB_OFFLINE is set", files="config.json",
                           download="hf download {repo} --local-dir models/{name}", cache_dir=tmp_path,
                           endpoint="https://huggingface.co")
    assert "--model" in str(err) and "--local-dir" in str(err)  # the CLI's message
    text = missing_model_words(err, [tmp_path / "models", tmp_path / "project"])
    assert text.startswith("the BLIP model org/m is not on this machine, and this machine cannot reach the Hugging "
                           "Face hub (huggingface.co): HF_HUB_OFFLINE is set.")
    assert "https://huggingface.co/org/m" in text and f"{tmp_path / 'models'}, {tmp_path / 'project'}" in text
    assert "caption model field" in text and no_flags(text)


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.mark.parametrize("module", sorted(p.name for p in UI.glob("*_tab.py")))
def test_no_flag_in_labels_and_help_texts(module: str) -> None:
    """Every `label=`, `info=` and `placeholder=` text and every `gr.Markdown(...)` of a tab."""
    tree = ast.parse((UI / module).read_text(encoding="utf-8"))
    texts: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            texts += [s for kw in node.keywords if kw.arg in ("label", "info", "placeholder") for s in _strings(kw.value)]
            if isinstance(node.func, ast.Attribute) and node.func.attr == "Markdown":
                texts += [s for arg in node.args for s in _strings(arg)]
    assert texts or module == "train_tab.py"
    assert [t for t in texts if "--" in t] == []


def test_dataset_tab_errors_name_no_flag(tiny_project: Path) -> None:
    elsewhere = tiny_project.parent / f"{tiny_project.name}-photos"
    elsewhere.mkdir()
    photos = tiny_project / "photos"
    photos.mkdir()
    shutil.copy(tiny_project / "train" / "5_zwx" / "z0.png", photos / "p.png")
    box = Sandbox.for_project(tiny_project)
    messages = [
        dataset_tab.import_from_path(box, str(elsewhere), "zwx"),  # not a photo folder of the server
        dataset_tab.import_from_path(box, "photos", "two words"),
        dataset_tab.import_from_path(box, "photos", "zwx", "", "0"),
        dataset_tab.import_from_path(box, "photos", "zwx", "", "5"),  # into train/5_zwx: exists, not empty
        dataset_tab.check_report(box, "zwx"),
        dataset_tab.check_report(box, "qqq"),  # captions without the trigger word: the lint suggests an edit
    ]
    for message in messages:
        assert no_flags(message), message
    assert "the server's photo folders (set when the UI was started)" in messages[0]
    assert messages[2].startswith("error: ") and 'repeats "0"' in messages[2]


def test_test_tab_errors_name_no_flag(tmp_path: Path, epoch_loras: Path) -> None:
    box = Sandbox.for_project(tmp_path / "project")
    fields = ["photo of zwx <lora:last:1>", "", 2, "Euler", "", 5.0, 7, 64, 64, 1, 1]
    messages = [
        generate_tab.generate_images(box, "tiny:sd1", "", "", "", *fields)[2],  # no LoRA folder picked
        generate_tab.generate_images(box, str(tmp_path / "model.safetensors"), "", "", "", *fields)[2],
        generate_tab.generate_images(box, "tiny:sd1", "", str(epoch_loras), "", *fields)[2],
        generate_tab.generate_images(box, "tiny:sd1", "", "", str(tmp_path), *fields)[2],
        generate_tab.epochs_grid(box, "tiny:sd1", "", "", "", "", "", *fields)[1],
    ]
    for message in messages:
        assert message.startswith("error: ") and no_flags(message), message
    assert "no LoRA folder was picked" in messages[0]
    assert "the server's models folders" in messages[1] and "the server's LoRA folders" in messages[2]
    assert "the server's embeddings folders" in messages[3]
