"""Damaged states and full disks end a training with one message, never a traceback
(state.py, recovery.py, save_errors.py)."""

from __future__ import annotations

import errno
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from lorakiln.cli import main
from lorakiln.errors import TrainingError
from lorakiln.training.loop import train
from lorakiln.training.save_errors import SaveFailed
from lorakiln.training.state import load_state

#: State saves at steps 2 and 4 with their LoRAs.
SAVES = dict(train__max_train_steps=4, output__save_every_n_steps=2, output__save_state=True)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, config_maker) -> Path:
    """An output folder with a state (step 4) and the step LoRAs, trained once for this module."""
    cfg = config_maker(tmp_path_factory.mktemp("saved"), **SAVES)
    train(cfg, progress=False)
    return Path(cfg.output.output_dir)


class NotATensor:
    """Pickled into a state file, it is refused by `weights_only=True`, whose PyTorch message
    would advise `weights_only=False`."""


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not what lorakiln wrote" * 8)
    else:  # a pickle of an object that is not a tensor or a plain value
        torch.save({"state": NotATensor()}, path)


@pytest.mark.parametrize(("name", "how"), [
    ("optimizer.pt", "truncate"), ("optimizer.pt", "pickle"), ("schedule.pt", "garbage"),
    ("rng.safetensors", "truncate"), ("network.safetensors", "garbage"), ("state.json", "truncate"),
])
def test_damaged_state_file_is_named_with_the_alternatives(saved_run, tmp_path, name, how) -> None:
    state = tmp_path / "last-state"
    shutil.copytree(saved_run / "last-state", state)
    for lora in saved_run.glob("*.safetensors"):
        shutil.copy(lora, tmp_path / lora.name)
    _damage(state / name, how)
    with pytest.raises(TrainingError) as err:
        load_state(state)
    text = str(err.value)
    assert f"{state} is damaged: {name} cannot be read" in text
    assert "weights_only" not in text and "Traceback" not in text
    assert "last-step00000004.safetensors" in text and "network.network_weights" in text  # what is left


def test_disk_full_while_saving_a_state(run_config, monkeypatch) -> None:
    """torch.save's zip writer reports a short write as this RuntimeError; the state of step 2
    stays whole and the message says where it is."""
    real_save = torch.save
    saves: list[str] = []

    def full_disk(obj, path, *args, **kwargs):
        saves.append(Path(path).name)
        if Path(path).name == "optimizer.pt" and saves.count("optimizer.pt") == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 3968")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = run_config(**SAVES)
    out = Path(cfg.output.output_dir)
    with pytest.raises(SaveFailed) as err:
        train(cfg, progress=False)
    text = str(err.value)
    assert f"could not write {out / 'last-state' / 'optimizer.pt'}: the disk is full" in text
    assert "Nothing was lost" in text and f"Last good state: {out / 'last-state'} (step 2)" in text
    assert "inline_container" not in text
    assert err.value.state == out / "last-state"
    monkeypatch.setattr(torch, "save", real_save)
    assert load_state(out / "last-state").position.global_step == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".last-state.")]  # no temp left


def test_disk_full_while_saving_a_lora_exits_2_with_the_resume_command(run_toml, tmp_path, monkeypatch,
                                                                        capsys) -> None:
    import lorakiln.networks.export as export

    real_write = export._write_safetensors

    def full_disk(path, tensors, metadata):
        if Path(path).name == "last-step00000004.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(export, "_write_safetensors", full_disk)
    toml = run_toml(**SAVES)
    out = tmp_path / "custom out"
    assert main(["train", str(toml), "--set", f"output.output_dir='{out}'"]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out / 'last-step00000004.safetensors'}: the disk is full" in err
    assert "Nothing was lost" in err and "(step 2)" in err and "Traceback" not in err
    [command] = [line.split("resume: ", 1)[1] for line in err.splitlines() if "resume: lorakiln" in line]
    assert shlex.split(command) == ["lorakiln", "train", str(toml), "--set", f"output.output_dir='{out}'",
                                    "--resume", str(out / "last-state")]
    assert (out / "last-step00000002.safetensors").is_file() and not (out / "last.lock").exists()
