"""`preflight` / `train --dry-run`: every problem found without loading a model, in one error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorakiln.cli import main
from lorakiln.config.load import load_config
from lorakiln.config.weights_format import sniff_weights
from lorakiln.errors import ConfigError
from lorakiln.training.preflight import collect_findings, preflight


def _image(path: Path, stream: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(stream).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    path.with_suffix(".txt").write_text("zwx, a toy", encoding="utf-8")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run TOML next to `train/10_zwx` (2 images: 20 samples per epoch); model `tiny:sd1`."""
    _image(tmp_path / "train" / "10_zwx" / "a.png", 1)
    _image(tmp_path / "train" / "10_zwx" / "b.png", 2)
    path = tmp_path / "run.toml"
    path.write_text('[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\n'
                    'resolution = "64,64"\nmin_bucket_reso = 64\nmax_bucket_reso = 128\ncheck_images = false\n'
                    '[output]\noutput_dir = "out"\n', encoding="utf-8")
    return path


def _findings(run: Path, *overrides: str) -> dict[str, str]:
    """key → message of the errors for `run` with `overrides`."""
    cfg = load_config(run, list(overrides))
    return {f.key: f.message for f in collect_findings(cfg) if f.severity == "error"}


def _dry_run(run: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str, str]:
    argv = ["train", str(run), "--dry-run"]
    for item in overrides:
        argv += ["--set", item]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _q(path: Path) -> str:
    return f'"{path.as_posix()}"'


def test_clean_config_passes(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _findings(run) == {}
    rc, out, _ = _dry_run(run, capsys)
    assert rc == 0 and "optimizer steps" in out


@pytest.mark.parametrize("model", ["tiny:sd1", "tiny:sdxl", "toy", "owner/model-name"])
def test_builtin_models_and_hub_ids_are_not_paths(run: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hub id passes when the hub can be downloaded from (offline it must be cached: test_preflight_model.py).
    from lorakiln.models import hub_access

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_access, "hub_unreachable", lambda *a, **k: None)
    monkeypatch.setattr(hub_access, "missing_repo", lambda *a, **k: None)  # the hub has it
    assert "model.pretrained_model" not in _findings(run, f'model.pretrained_model="{model}"')


def test_missing_model_path_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _dry_run(run, capsys, 'model.pretrained_model="models/sd15.safetensors"')
    assert rc == 2
    assert "model.pretrained_model" in err and "sd15.safetensors" in err and "does not exist" in err


def test_pickle_needs_the_opt_in(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    rc, _, err = _dry_run(run, capsys, f"model.pretrained_model={_q(ckpt)}")
    assert rc == 2 and "model.ckpt" in err and "torch.save" in err and "model.allow_pickle = true" in err
    assert "model.pretrained_model" not in _findings(run, f"model.pretrained_model={_q(ckpt)}",
                                                     "model.allow_pickle=true")


def test_pickle_is_found_by_header_not_suffix(run: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    message = _findings(run, f"model.pretrained_model={_q(disguised)}", "model.allow_pickle=true")[
        "model.pretrained_model"]
    assert "named .safetensors but is a Python pickle (protocol 4)" in message


def test_safetensors_header_is_checked(run: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(4, 4)}, str(good))
    assert sniff_weights(good).kind == "safetensors"
    # a sound header: what is checked next is what the tensors are (test_preflight_model.py)
    assert "not a Stable Diffusion 1.x or SDXL checkpoint" in _findings(
        run, f"model.pretrained_model={_q(good)}")["model.pretrained_model"]

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model at all, just text")
    message = _findings(run, f"model.pretrained_model={_q(garbage)}")["model.pretrained_model"]
    assert message.startswith(f"not a valid .safetensors file: {garbage}")

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    message = _findings(run, f"model.pretrained_model={_q(cut)}")["model.pretrained_model"]
    assert "cut.safetensors" in message and "truncated" in message

    # a valid header 640 bytes long starts with 0x80 0x02, like a protocol-2 pickle: still safetensors
    name = "w" * (640 - len('{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'))
    lookalike = tmp_path / "lookalike.safetensors"
    save_file({name: torch.zeros(1)}, str(lookalike))
    assert lookalike.read_bytes()[:2] == b"\x80\x02"
    assert sniff_weights(lookalike).kind == "safetensors"

    renamed = tmp_path / "model.ckpt"
    renamed.write_bytes(good.read_bytes())
    message = _findings(run, f"model.pretrained_model={_q(renamed)}")["model.pretrained_model"]
    assert "rename it to model.safetensors" in message


def test_diffusers_folder_layout_and_pickles(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "notamodel"
    folder.mkdir()
    key = f"model.pretrained_model={_q(folder)}"
    assert "not a diffusers model" in _findings(run, key)["model.pretrained_model"]
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_text("{}", encoding="utf-8")  # the loader reads it first
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    assert "is a pickle" in _findings(run, key)["model.pretrained_model"]
    assert "model.pretrained_model" not in _findings(run, key, "model.allow_pickle=true")
    save_file({"w": torch.zeros(1)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert "model.pretrained_model" not in _findings(run, key)


def test_vae_lora_and_resume_paths(run: Path, tmp_path: Path) -> None:
    pt = tmp_path / "lora.pt"
    torch.save({}, pt)
    errors = _findings(run, 'model.vae="vae/missing.safetensors"', f"network.network_weights={_q(pt)}",
                       f"train.resume={_q(tmp_path / 'out' / 'last-state')}")
    assert "does not exist" in errors["model.vae"]
    assert "only read from .safetensors" in errors["network.network_weights"]
    assert "does not exist" in errors["train.resume"]
    (tmp_path / "out" / "last-state").mkdir(parents=True)
    assert "incomplete" in _findings(run, f"train.resume={_q(tmp_path / 'out' / 'last-state')}")["train.resume"]
    lora = tmp_path / "start.safetensors"
    save_file({"w": torch.zeros(2)}, str(lora))
    assert "has no kohya-format LoRA modules" in _findings(run, f"network.network_weights={_q(lora)}")[
        "network.network_weights"]
    module = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{module}.lora_down.weight": torch.zeros(4, 32), f"{module}.lora_up.weight": torch.zeros(32, 4)},
              str(lora))
    assert "network.network_weights" not in _findings(run, f"network.network_weights={_q(lora)}",
                                                      "network.network_dim=4")


def test_output_dir_must_be_a_writable_folder(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    rc, _, err = _dry_run(run, capsys, 'output.output_dir="afile"')
    assert rc == 2 and "output.output_dir" in err and "is a file, not a folder" in err
    assert "afile is a file" in _findings(run, 'output.output_dir="afile/sub/out"')["output.output_dir"]
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "x"
    monkeypatch.setattr("lorakiln.training.preflight.os.access", lambda path, mode: False)
    assert "is not writable" in _findings(run)["output.output_dir"]


def test_config_dir_and_class_data_dir(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "is not a folder" in _findings(run, 'model.config_dir="configs/missing"')["model.config_dir"]
    prior = ["prior.with_prior_preservation=true", 'prior.class_prompt="a toy"']
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    assert "is a file" in _findings(run, *prior, 'prior.class_data_dir="afile"')["prior.class_data_dir"]
    (tmp_path / "class").mkdir()
    monkeypatch.setattr("lorakiln.training.preflight.os.access", lambda path, mode: False)
    # an existing class folder is only read when it holds enough images: no write check
    assert "prior.class_data_dir" not in _findings(run, *prior, 'prior.class_data_dir="class"')
    assert "prior.class_data_dir" in _findings(run, *prior, 'prior.class_data_dir="class/new"')


def test_output_dir_inside_the_dataset_is_refused(run: Path) -> None:
    assert "inside data.train_data_dir" in _findings(run, 'output.output_dir="train/out"')["output.output_dir"]


def test_every_problem_in_one_error(run: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "train" / "-3_zwx").mkdir()
    cfg = load_config(run, ['model.pretrained_model="missing.safetensors"', 'output.output_dir="afile"'])
    with pytest.raises(ConfigError) as info:
        preflight(cfg, log=None)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "model.pretrained_model" in message and "output.output_dir" in message
    assert "has repeats -3" in message and "`3_zwx`" in message


def test_batch_larger_than_the_samples_warns(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _dry_run(run, capsys, "train.train_batch_size=1000")
    assert rc == 0
    assert "warning: train.train_batch_size: 1000 is larger than the 20 sample(s) per epoch" in out
    rc, out, _ = _dry_run(run, capsys, "train.train_batch_size=20")
    assert rc == 0 and "train.train_batch_size:" not in out


def test_real_training_runs_the_checks_before_loading(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --dry-run the same checks stop the run before any model is loaded."""
    assert main(["train", str(run), "--set", 'model.pretrained_model="nowhere/at/all.safetensors"']) == 2
    err = capsys.readouterr().err
    assert "found before loading any model" in err and "all.safetensors" in err
