"""The `lorakiln` command: dispatch, errors without tracebacks, lazy heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorakiln.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart" / "config.toml"


def test_help_does_not_import_torch() -> None:
    code = "import sys; from lorakiln.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dry_run_prints_step_arithmetic(capsys) -> None:
    assert main(["train", str(QUICKSTART), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "10_zwx: 10 images x 10 repeats = 100" in out
    assert "total steps = 50 batches x 3 epochs = 150" in out


def test_dry_run_with_override(capsys) -> None:
    assert main(["train", str(QUICKSTART), "--dry-run", "--set", "train.max_train_epochs=2"]) == 0
    assert "= 100" in capsys.readouterr().out


def test_config_error_is_a_message_not_a_traceback(capsys) -> None:
    assert main(["train", str(QUICKSTART), "--dry-run", "--set", "train.unet_lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "did you mean 'train.unet_lr'" in err and "Traceback" not in err


def test_dataset_is_checked_before_the_model_loads(tmp_path: Path, capsys) -> None:
    (tmp_path / "train" / "zwx").mkdir(parents=True)  # no N_ prefix
    (tmp_path / "run.toml").write_text(
        '[model]\npretrained_model = "does/not-exist-anywhere"\n[data]\ntrain_data_dir = "train"\n',
        encoding="utf-8")
    assert main(["train", str(tmp_path / "run.toml")]) == 2
    err = capsys.readouterr().err
    assert "zwx" in err and "10_zwx" in err  # the dataset error, not a model-loading error


def test_unknown_optimizer_fails_before_dataset_and_model(tmp_path: Path, capsys) -> None:
    assert main(["train", str(QUICKSTART), "--dry-run", "--set", 'train.optimizer_type="AdamW9bit"']) == 2
    assert "AdamW8bit" in capsys.readouterr().err


def test_presets_listed(capsys) -> None:
    assert main(["presets"]) == 0
    assert "kohya-character" in capsys.readouterr().out


def test_config_show_resolves(capsys) -> None:
    assert main(["config", "show", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert str(ROOT / "examples" / "quickstart" / "train") in out


@pytest.mark.parametrize("argv", [["--version"]])
def test_version(argv, capsys) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert "lorakiln" in capsys.readouterr().out


def test_library_start_up_notices_are_quiet(caplog, capsys) -> None:
    """bitsandbytes' hub-kernel notice and transformers' "install torchvision" advice do not
    apply to lorakiln; errors from the same loggers still show."""
    import logging

    assert main(["presets"]) == 0
    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        logging.getLogger("transformers.utils.import_utils").warning("requires torchvision (not installed)")
        logging.getLogger("bitsandbytes.backends.cpu.ops").error("a real error")
    assert [r.getMessage() for r in caplog.records] == ["a real error"]
