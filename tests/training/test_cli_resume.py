"""`lorakiln train`: the printed resume command reproduces the run, and `--resume [STATE]`."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

from lorakiln.cli import build_parser, main
from lorakiln.training import loop as loop_module
from lorakiln.training.command import resume_command


def test_resume_command_keeps_config_preset_overrides_and_events() -> None:
    args = build_parser().parse_args([
        "train", "my runs/run.toml", "--preset", "kohya-character", "--set", "output.output_dir='/tmp/my out'",
        "--set", "train.resume=old-state", "--set", "train.unet_lr=2e-4", "--events", "ev ents.jsonl",
        "--resume", "older-state"])
    command = resume_command(args, Path("/tmp/my out/last-state"))
    assert shlex.split(command) == [
        "lorakiln", "train", "my runs/run.toml", "--preset", "kohya-character",
        "--set", "output.output_dir='/tmp/my out'", "--set", "train.unet_lr=2e-4",
        "--events", "ev ents.jsonl", "--resume", "/tmp/my out/last-state"]


def test_printed_resume_command_continues_the_same_run(run_toml, tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C at step 2 of a run whose output folder is an override; the printed command, run
    as printed, resumes into that folder and ends with the uninterrupted run's weights."""
    toml = run_toml(output__save_state=True)
    sets = ["--set", "train.max_train_steps=4", "--set", "data.shuffle_caption=true"]
    assert main(["train", str(toml), *sets, "--set", f"output.output_dir='{tmp_path / 'full'}'"]) == 0
    real = loop_module.compute_loss

    def ctrl_c_in_step_2(ctx, batch, step, micro):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(ctx, batch, step, micro)

    monkeypatch.setattr(loop_module, "compute_loss", ctrl_c_in_step_2)
    cut = tmp_path / "my cut run"
    capsys.readouterr()
    assert main(["train", str(toml), *sets, "--set", f"output.output_dir='{cut}'"]) == 130
    [command] = [line.split("resume: ", 1)[1] for line in capsys.readouterr().out.splitlines()
                 if "resume: " in line]
    monkeypatch.setattr(loop_module, "compute_loss", real)
    argv = shlex.split(command)
    assert argv[:2] == ["lorakiln", "train"] and argv[-2:] == ["--resume", str(cut / "last-state")]
    assert main(argv[1:]) == 0
    assert "at step 2" in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_state_fails_before_the_model_loads(run_toml, tmp_path, monkeypatch, capsys) -> None:
    import lorakiln.models.configured as configured

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(configured, "load_configured_model", no_load)
    toml = run_toml()
    assert main(["train", str(toml), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: this output has no state to resume: {tmp_path / 'out' / 'last-state'} does not exist" in err
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(toml), "--resume", "elsewhere-state"]) == 2  # relative to the current folder
    err = capsys.readouterr().err
    assert f"resume state {tmp_path / 'elsewhere-state'} does not exist" in err and "Traceback" not in err
