"""The Test tab's handlers: defaults from the run TOML, the LoRA list, pasting A1111 parameters,
generation with saved infotext, and the epochs × strengths grid — on the tiny SD1 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lorakiln.inference.infotext import read_png_infotext
from lorakiln.ui import generate_tab as tab
from lorakiln.ui.forms import field_specs, save_run_toml
from lorakiln.ui.sandbox import Sandbox

#: prompt, negative, steps, sampler, schedule, CFG, seed, width, height, batch count, clip skip
FIELDS = ["photo of zwx", "", 2, "Euler", "", 5.0, 7, 64, 64, 1, 1]


def _box(project: Path, model: Path, loras: Path) -> Sandbox:
    """`lorakiln ui --project P --models-dir <model's folder> --lora-dir <loras>`."""
    return Sandbox.for_project(project, model=[model.parent], lora=[loras])


def _fields(**changes: object) -> list[object]:
    values = dict(zip(tab.FIELDS, FIELDS, strict=True)) | changes
    return [values[k] for k in tab.FIELDS]


def test_defaults_come_from_the_run_toml(tmp_path: Path, tiny_sd1_file: Path) -> None:
    assert tab.run_defaults(Sandbox.for_project(tmp_path)) == ("", "", str(tmp_path / "output"))  # no run TOML yet
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.safetensors").write_bytes(tiny_sd1_file.read_bytes())
    (tmp_path / "train").mkdir()
    values = {s.key: s.default for s in field_specs()} | {
        "model.pretrained_model": "models/base.safetensors", "data.train_data_dir": "train",
        "output.output_dir": "out"}
    save_run_toml(tmp_path / "run.toml", values)
    model, vae, loras = tab.run_defaults(Sandbox.for_project(tmp_path))
    assert model == str((tmp_path / "models" / "base.safetensors").resolve())  # relative to the TOML
    assert vae == "" and loras == str((tmp_path / "out").resolve())


def test_lora_list_and_prompt_tag(epoch_loras: Path) -> None:
    assert tab.lora_names(str(epoch_loras)) == ["last", "last-000001"]
    assert tab.lora_names("/no/such/folder") == []
    assert tab.final_lora(["anna", "anna-000001", "anna-step00000032"]) == "anna"
    assert tab.final_lora(["anna-000001"]) == "anna-000001" and tab.final_lora([]) is None
    assert tab.add_lora("photo of zwx", "last", 0.8) == "photo of zwx, <lora:last:0.8>"
    assert tab.add_lora("", "last", 1.0) == "<lora:last:1>"
    # A second click removes the tag (A1111's cards toggle), whatever its weight; others stay.
    assert tab.add_lora("photo of zwx, <lora:last:0.8>", "last", 1.0) == "photo of zwx"
    assert tab.add_lora("<lora:last:0.5>, photo, <lora:style:1>", "last", 1.0) == "photo, <lora:style:1>"
    assert tab.add_lora("photo, <lora:last-000002:1>", "last", 1.0) == "photo, <lora:last-000002:1>, <lora:last:1>"
    # The slider rewrites the weight of a tag that is there, and nothing else.
    assert tab.set_lora_strength("photo, <lora:last:0.8>", "last", 0.35) == "photo, <lora:last:0.35>"
    assert tab.set_lora_strength("photo, <lora:style:0.8>", "last", 0.35) == "photo, <lora:style:0.8>"


def test_paste_a1111_parameters() -> None:
    msg, *fields = tab.paste_params("photo of zwx, smiling\nNegative prompt: blurry\nSteps: 30, Sampler: Euler a, "
                                    "Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 512x768, "
                                    "Model hash: abc123")
    values = dict(zip(tab.FIELDS, fields, strict=True))
    assert values == {"prompt": "photo of zwx, smiling", "negative_prompt": "blurry", "steps": 30,
                      "sampler": "Euler a", "schedule_type": "Karras", "cfg_scale": 6.5, "seed": 42, "width": 512,
                      "height": 768, "batch_count": 1, "clip_skip": 1}
    assert "Model hash" in msg
    msg, *fields = tab.paste_params("  ")  # an empty box keeps every field as it was (A1111's paste)
    assert msg.startswith("nothing to paste") and all(f == {"__type__": "update"} for f in fields), fields


def test_generate_saves_pngs_with_infotext_and_applies_the_lora(tmp_path: Path, tiny_sd1_file: Path,
                                                                epoch_loras: Path) -> None:
    model, loras = str(tiny_sd1_file), str(epoch_loras)
    box = _box(tmp_path, tiny_sd1_file, epoch_loras)
    base, text, msg = tab.generate_images(box, model, "", loras, "", *_fields())
    assert msg.startswith("saved") and len(base) == 1
    [png] = sorted((tmp_path / "outputs" / "txt2img").glob("*.png"))
    assert png.name == "00000-7.png" and read_png_infotext(png) == text
    assert "Steps: 2, Sampler: Euler" in text and "Seed: 7" in text
    zero, _, _ = tab.generate_images(box, model, "", loras, "", *_fields(prompt="photo of zwx <lora:last:0>"))
    full, _, _ = tab.generate_images(box, model, "", loras, "", *_fields(prompt="photo of zwx <lora:last:1>"))
    as_array = [np.asarray(items[0][0]) for items in (base, zero, full)]
    assert np.array_equal(as_array[0], as_array[1]) and not np.array_equal(as_array[0], as_array[2])
    batch, _, _ = tab.generate_images(box, model, "", loras, "", *_fields(batch_count=2))
    assert [name for _, name in batch] == ["00003-7.png", "00004-8.png"]  # A1111 numbering, seeds 7, 8


@pytest.mark.parametrize(("fields", "model", "message"), [
    ({"prompt": " "}, "tiny", "prompt is empty"),
    ({"prompt": "zwx <lora:nope:1>"}, "tiny", "LoRA 'nope' not found"),
    ({}, "", "no base model"),
    ({"prompt": "zwx <lora:../outside/x:1>"}, "tiny", "not by a path"),
    ({}, "outside", "outside the folders this UI may read"),
    ({}, "pickle", "is a pickle file"),
])
def test_generate_errors_are_messages(tmp_path: Path, tiny_sd1_file: Path, epoch_loras: Path, fields: dict,
                                      model: str, message: str) -> None:
    (tmp_path / "p" / "m.ckpt").parent.mkdir()
    (tmp_path / "p" / "m.ckpt").write_bytes(b"not loaded")
    model = {"tiny": str(tiny_sd1_file), "outside": str(tmp_path / "elsewhere" / "m.safetensors"),
             "pickle": str(tmp_path / "p" / "m.ckpt")}.get(model, model)
    box = _box(tmp_path / "p", tiny_sd1_file, epoch_loras)
    images, _, msg = tab.generate_images(box, model, "", str(epoch_loras), "", *_fields(**fields))
    assert images == [] and msg.startswith("error") and message in msg


def test_epochs_by_strengths_grid(tmp_path: Path, tiny_sd1_file: Path, epoch_loras: Path) -> None:
    box = _box(tmp_path, tiny_sd1_file, epoch_loras)
    grid, msg = tab.epochs_grid(box, str(tiny_sd1_file), "", str(epoch_loras), "", "",
                                "Prompt S/R: 1.0, 0.5", *_fields())
    assert "2 × 2 cells, seed 7" in msg
    assert grid.width >= 2 * 64 and grid.height >= 2 * 64
    assert (tmp_path / "outputs" / "grids" / "xyz_grid-0000.png").is_file()
    grid, msg = tab.epochs_grid(box, str(tiny_sd1_file), "", str(epoch_loras), "", None, None, *_fields())
    assert grid is not None and "cells" in msg, msg  # the axes panel never opened: its boxes send None
    grid, msg = tab.epochs_grid(box, str(tiny_sd1_file), "", str(tmp_path), "", "", "", *_fields())
    assert grid is None and "should hold one final LoRA" in msg
    grid, msg = tab.epochs_grid(box, str(tiny_sd1_file), "", str(epoch_loras), "", "Prompt S/R: last, ../../x",
                                "", *_fields(prompt="photo of zwx <lora:last:1.0>"))  # a path written by S/R
    assert grid is None and "not by a path" in msg, msg
