"""`lorakiln config import` on the command line: files, text, stdin, errors, exit codes."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

from lorakiln.cli import main
from lorakiln.config.load import load_config

FIXTURES = Path(__file__).parent / "fixtures"


def test_writes_a_loadable_run_toml(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs" / "huggy.toml"
    out.parent.mkdir()
    assert main(["config", "import", str(FIXTURES / "huggy_shared_params.sh"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (diffusers)" in printed and "not imported: --report_to=wandb" in printed
    cfg = load_config(out)  # relative paths resolve against the TOML's folder, as documented in it
    assert cfg.data.train_data_dir == str(out.parent / "huggy_clean")
    assert cfg.output.output_name == "huggy_v11"


def test_prints_to_stdout_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    assert main(["config", "import", str(FIXTURES / "kohya_gui_seed000.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# lorakiln run config imported") and "[network]\nnetwork_module = \"lora\"" in text
    out = tmp_path / "run.toml"
    out.write_text("keep me")
    assert main(["config", "import", str(FIXTURES / "kohya_gui_seed000.json"), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["config", "import", str(FIXTURES / "kohya_gui_seed000.json"), "-o", str(out), "--force"]) == 0


def test_command_text_and_stdin(monkeypatch, capsys) -> None:
    cmd = "--pretrained_model_name_or_path=base --instance_data_dir=dog --instance_prompt=sks --rank=8"
    assert main(["config", "import", cmd]) == 0
    assert "network_dim = 8" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO((FIXTURES / "huggy_adamw.sh").read_text()))
    assert main(["config", "import", "-"]) == 0
    captured = capsys.readouterr()
    assert "from standard input" in captured.out and "glues" in captured.err


def test_errors_name_the_supported_formats(tmp_path: Path, capsys) -> None:
    weird = tmp_path / "notes.txt"
    weird.write_text("just some words = [unclosed\n")
    assert main(["config", "import", str(weird)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot tell") and "kohya-gui" in err and "sd-scripts" in err and "diffusers" in err
    shutil.copy(FIXTURES / "huggy_adamw.sh", tmp_path / "cmd.sh")
    assert main(["config", "import", str(tmp_path / "cmd.sh"), "--format", "kohya-gui"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_incomplete_source_exits_1(capsys) -> None:
    assert main(["config", "import", "--instance_data_dir=dog --rank=4", "--format", "diffusers"]) == 1
    assert "names no base model" in capsys.readouterr().err


def test_import_help_does_not_import_torch() -> None:
    code = ("import sys; from lorakiln.cli import build_parser; build_parser().parse_args(['config', 'import', 'x']);"
            "print('torch' in sys.modules, 'lorakiln.config.importers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
