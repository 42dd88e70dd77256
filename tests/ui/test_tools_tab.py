"""The Tools tab's handlers: info, convert, resize and merge give the CLI's reports, take paths
relative to the project, and turn refusals (existing output, bad option) into messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from lorakiln.ui import tools_tab as tab
from lorakiln.ui.sandbox import Sandbox


def _project(tmp_path: Path, epoch_loras: Path) -> Sandbox:
    (tmp_path / "output").mkdir()
    for stem in ("last", "last-000001"):
        shutil.copy(epoch_loras / f"{stem}.safetensors", tmp_path / "output")
    return Sandbox.for_project(tmp_path)


def test_info_relative_to_the_project(tmp_path: Path, epoch_loras: Path) -> None:
    project = _project(tmp_path, epoch_loras)
    text = tab.info(project, "output/last.safetensors")
    assert "Base model  SD 1.x" in text and "Loads in    AUTOMATIC1111" in text and "rank 2" in text
    assert "lora_unet_" in tab.info(project, "output/last.safetensors", modules=True)
    assert tab.info(project, "output/missing.safetensors").startswith("error")
    assert tab.info(project, "") == "error: name a LoRA file"


def test_resize_then_refuse_to_overwrite(tmp_path: Path, epoch_loras: Path) -> None:
    project = _project(tmp_path, epoch_loras)
    report = tab.resize(project, "output/last.safetensors", "output/last-r1.safetensors", 1, None, "", None)
    assert "last-r1.safetensors" in report and not report.startswith("error")
    with safe_open(str(tmp_path / "output" / "last-r1.safetensors"), "pt") as f:
        downs = [k for k in list(f.keys()) if k.endswith("lora_down.weight")]
        assert downs and all(f.get_slice(k).get_shape()[0] == 1 for k in downs)
    defaults = tab.resize(project, "output/last.safetensors", "output/last-r2.safetensors", 2, None, "", 0)
    assert defaults.startswith("wrote"), defaults  # the untouched form sends dynamic param 0
    assert "dynamic method" in tab.resize(project, "output/last.safetensors", "output/x.safetensors", 1, None, "", 0.5)
    again = tab.resize(project, "output/last.safetensors", "output/last-r1.safetensors", 1, None, "", None)
    assert again.startswith("error") and "last-r1.safetensors" in again
    forced = tab.resize(project, "output/last.safetensors", "output/last-r1.safetensors", 1, None, "", None, "fp16",
                        True)  # overwrite ticked
    assert forced.startswith("wrote"), forced
    with safe_open(str(tmp_path / "output" / "last-r1.safetensors"), "pt") as f:
        assert f.get_tensor(downs[0]).dtype == torch.float16


def test_convert_to_diffusers(tmp_path: Path, epoch_loras: Path) -> None:
    project = _project(tmp_path, epoch_loras)
    report = tab.convert(project, "output/last.safetensors", "output/diffusers.safetensors", "diffusers")
    assert not report.startswith("error"), report
    with safe_open(str(tmp_path / "output" / "diffusers.safetensors"), "pt") as f:
        assert any(k.startswith("unet.") for k in list(f.keys()))
    assert tab.convert(project, "output/last.safetensors", "output/y.safetensors", "onnx").startswith("error")


def test_merge_two_loras_into_one(tmp_path: Path, epoch_loras: Path) -> None:
    project = _project(tmp_path, epoch_loras)
    report = tab.merge(project, "output/last.safetensors:0.7\noutput/last-000001.safetensors:0.3\n",
                       "output/merged.safetensors", "", "", "sum", None, None)
    assert "merged.safetensors" in report and "exact concatenation" in report, report
    with safe_open(str(tmp_path / "output" / "merged.safetensors"), "pt") as f:
        down = next(k for k in list(f.keys()) if k.endswith("lora_down.weight"))
        assert f.get_slice(down).get_shape()[0] == 4  # ranks add: 2 + 2
    assert tab.merge(project, "", "output/m2.safetensors", "", "", "sum", None, None).startswith("error")
    assert "checkpoint" in tab.merge(project, "output/last.safetensors", "output/m3.safetensors", "", "checkpoint",
                                     "sum", None, None)
