"""The Tools tab's handlers: info, convert, resize and merge give the CLI's reports, take paths
relative to the project, and turn refusals (existing output, bad option) into messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorakiln.errors import LorakilnError
from lorakiln.ui import tools_tab as tab
from lorakiln.ui.sandbox import Sandbox
from lorakiln.ui.wording import no_flags


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
    assert tab.info(project, "") == "error: pick a LoRA file"


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
    picked = ["output/last.safetensors", "output/last-000001.safetensors"]  # the multiselect's values
    report = tab.merge(project, picked, "0.7, 0.3", "output/merged.safetensors", "", "", "sum", None, None)
    assert "merged.safetensors" in report and "exact concatenation" in report, report
    with safe_open(str(tmp_path / "output" / "merged.safetensors"), "pt") as f:
        down = next(k for k in list(f.keys()) if k.endswith("lora_down.weight"))
        assert f.get_slice(down).get_shape()[0] == 4  # ranks add: 2 + 2
    assert tab.merge(project, [], "", "output/m2.safetensors", "", "", "sum", None, None).startswith("error")
    report = tab.merge(project, ["output/last.safetensors"], "", "output/m3.safetensors", "", "checkpoint", "sum",
                       None, None)
    assert '"to" checkpoint needs "base model"' in report, report
    assert "3 strengths for 2 LoRA(s)" in tab.merge(project, picked, "1 1 1", "output/m4.safetensors")


def test_parse_strengths() -> None:
    assert tab.parse_strengths("", 2) == [(1.0, 1.0), (1.0, 1.0)]
    assert tab.parse_strengths("0.5", 2) == [(0.5, 0.5), (0.5, 0.5)]
    assert tab.parse_strengths("0.7, 1:0.5", 2) == [(0.7, 0.7), (1.0, 0.5)]
    with pytest.raises(LorakilnError, match="not a number"):
        tab.parse_strengths("strong", 1)


def test_every_tool_runs_with_only_input_and_output(tmp_path: Path, epoch_loras: Path) -> None:
    """The form's own defaults: what the browser sends when only the input and output are chosen
    (number boxes it sends as 0, drop-downs at their first value)."""
    project = _project(tmp_path, epoch_loras)
    assert "Base model  SD 1.x" in tab.info(project, "output/last.safetensors", False)
    report = tab.convert(project, "output/last.safetensors", "output/d.safetensors", "", "", False)
    assert report.startswith("wrote") and "diffusers" in report, report  # "to": the other format
    back = tab.convert(project, "output/d.safetensors", "output/k.safetensors", "", "", False)
    assert back.startswith("wrote") and "kohya" in back, back
    report = tab.resize(project, "output/last.safetensors", "output/r.safetensors", tab.DEFAULT_RESIZE_RANK, 0, "",
                        0, "", False)
    assert report.startswith("wrote"), report
    report = tab.merge(project, ["output/last.safetensors"], "", "output/m.safetensors", "", "", "sum", 0, 0, "",
                       False)
    assert report.startswith("wrote") or "exact concatenation" in report, report


def test_pickers_list_only_files_the_server_may_read(tmp_path: Path, epoch_loras: Path) -> None:
    loras, outside = tmp_path / "loras", tmp_path / "outside"
    for folder in (loras, outside):
        folder.mkdir()
        shutil.copy(epoch_loras / "last.safetensors", folder / "style.safetensors")
    project = tmp_path / "project"
    (project / "output").mkdir(parents=True)
    shutil.copy(epoch_loras / "last.safetensors", project / "output" / "last.safetensors")
    (project / "link-out").symlink_to(outside)
    box = Sandbox.for_project(project, lora=[loras])
    assert tab.lora_files(box) == ["output/last.safetensors", str(loras / "style.safetensors")]
    assert tab.base_models(box) == [("none: merge into one LoRA", "")]


def test_messages_name_fields_not_flags(tmp_path: Path, epoch_loras: Path) -> None:
    project = _project(tmp_path, epoch_loras)
    tab.convert(project, "output/last.safetensors", "output/c.safetensors", "diffusers")
    messages = {
        "exists": tab.convert(project, "output/last.safetensors", "output/c.safetensors", "diffusers"),
        "no rank": tab.resize(project, "output/last.safetensors", "output/r.safetensors", None, None, "", None),
        "no param": tab.resize(project, "output/last.safetensors", "output/r.safetensors", 2, None, "sv_fro", None),
        "density": tab.merge(project, ["output/last.safetensors"], "", "output/t.safetensors", "", "", "ties", None,
                             None),
        "outside": tab.info(project, str(tmp_path.parent / "elsewhere.safetensors")),
        "family": tab.convert(project, "output/last.safetensors", "output/f.safetensors", "diffusers", "sd3"),
    }
    for name, message in messages.items():
        assert message.startswith("error: ") and no_flags(message), (name, message)
    assert 'tick "overwrite" to replace it' in messages["exists"]
    assert '"rank"' in messages["no rank"] and '"dynamic param"' in messages["no param"]
    assert '"density"' in messages["density"] and "the server's LoRA folders" in messages["outside"]
