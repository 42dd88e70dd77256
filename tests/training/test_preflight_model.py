"""`train --dry-run` checks the base model (path, format, family, hub id reachable or cached) and
says what it will load and on which device and precision the run will train."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorakiln.cli import main
from lorakiln.config.load import load_config
from lorakiln.training import device_plan
from lorakiln.training.device_plan import DeviceChoice, choose_device, device_line
from lorakiln.training.preflight import collect_findings, describe_model


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run TOML next to `train/10_zwx` (2 images); model `tiny:sd1`."""
    sub = tmp_path / "train" / "10_zwx"
    sub.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (90 * i, 40, 200)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text("zwx, a toy", encoding="utf-8")
    path = tmp_path / "run.toml"
    path.write_text('[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\n'
                    'resolution = "64,64"\nmin_bucket_reso = 64\nmax_bucket_reso = 128\ncheck_images = false\n'
                    '[output]\noutput_dir = "out"\n', encoding="utf-8")
    return path


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home and a hub endpoint on a closed local port."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return tmp_path / "hf"


def _errors(run: Path, *overrides: str) -> dict[str, str]:
    return {f.key: f.message for f in collect_findings(load_config(run, list(overrides))) if f.severity == "error"}


def _q(path: Path) -> str:
    return f'"{path.as_posix()}"'


def _dry_run(run: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str, str]:
    argv = ["train", str(run), "--dry-run"]
    for item in overrides:
        argv += ["--set", item]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("offline", [False, True])
def test_uncached_hub_model_fails_the_dry_run_fast(run: Path, offline_hub: Path, offline: bool,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    rc, _, err = _dry_run(run, capsys, 'model.pretrained_model="someorg/sd-model"', 'model.vae="someorg/vae"')
    assert rc == 2 and time.monotonic() - start < 10
    assert "model.pretrained_model: could not get the base model 'someorg/sd-model'" in err
    assert "model.vae: could not get the VAE 'someorg/vae'" in err
    assert "local diffusers folder" in err and "hf download someorg/sd-model" in err
    assert ("HF_HUB_OFFLINE is set" if offline else "set HF_HUB_OFFLINE=1") in err


def test_a_missing_relative_folder_is_not_silently_a_hub_id(run: Path, offline_hub: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`models/sd15` looks like `owner/name`; with nothing on disk and no hub it fails, naming it."""
    rc, _, err = _dry_run(run, capsys, 'model.pretrained_model="models/sd15"')
    assert rc == 2 and "model.pretrained_model" in err and "no local file or folder named 'models/sd15'" in err


def test_cached_or_downloadable_hub_model_passes(run: Path, offline_hub: Path, tiny_sd1_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo = offline_hub / "hub" / "models--someorg--tiny"
    shutil.copytree(tiny_sd1_dir, repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    assert _errors(run, 'model.pretrained_model="someorg/tiny"') == {}
    cfg = load_config(run, ['model.pretrained_model="someorg/tiny"'])
    assert describe_model(cfg) == f"base model: hub id someorg/tiny, in the local Hugging Face cache ({repo / 'snapshots' / 'abc'})"
    from lorakiln.models import hub_access

    monkeypatch.setattr(hub_access, "hub_unreachable", lambda *a, **k: None)  # the hub answers
    monkeypatch.setattr(hub_access, "missing_repo", lambda *a, **k: None)  # and has the repo
    assert _errors(run, 'model.pretrained_model="someorg/other"') == {}
    cfg = load_config(run, ['model.pretrained_model="someorg/other"'])
    assert describe_model(cfg) == "base model: hub id someorg/other, not cached yet: downloaded from 127.0.0.1 when the run starts"


class _Hub(BaseHTTPRequestHandler):
    """A stand-in hub: answers `/`, knows one model (`someorg/real`), says 401 for any other."""

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        known = self.path in ("/", "/api/models/someorg/real")
        self.send_response(200 if known else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_repo_the_hub_does_not_have_fails_the_dry_run(run: Path, offline_hub: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, a mistyped relative folder (`models/sd15`) would otherwise pass as a hub id."""
    server = HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_TOKEN", "")  # ask anonymously, whatever this machine has saved
        message = _errors(run, 'model.pretrained_model="models/sd15"')["model.pretrained_model"]
        assert "'models/sd15' is neither a file or folder here" in message and "answers HTTP 401" in message
        assert _errors(run, 'model.pretrained_model="someorg/real"') == {}
    finally:
        server.shutdown()
        server.server_close()


def test_single_file_must_be_sd1_or_sdxl(run: Path, tmp_path: Path, tiny_sd1_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, str(flux))
    lora = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, str(lora))
    rc, _, err = _dry_run(run, capsys, f"model.pretrained_model={_q(flux)}")
    assert rc == 2 and "model.pretrained_model" in err and "it looks like FLUX" in err
    assert "a LoRA/LyCORIS network, not a base model" in _errors(run, f"model.pretrained_model={_q(lora)}")[
        "model.pretrained_model"]
    rc, out, _ = _dry_run(run, capsys, f"model.pretrained_model={_q(tiny_sd1_file)}")
    size = f"{tiny_sd1_file.stat().st_size / 1e6:.1f} MB"
    assert rc == 0 and f"base model: SD 1.x single-file checkpoint, {size} ({tiny_sd1_file})" in out


def test_diffusers_folder_must_be_a_family_lorakiln_trains(run: Path, tmp_path: Path, tiny_sd1_dir: Path,
                                                           tiny_sdxl_dir: Path) -> None:
    flux = tmp_path / "flux"
    (flux / "transformer").mkdir(parents=True)
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}), encoding="utf-8")
    (flux / "unet").mkdir()  # even with a unet/ folder, the pipeline class decides
    (flux / "unet" / "config.json").write_text("{}", encoding="utf-8")
    assert "pipeline class 'FluxPipeline' matches no known family" in _errors(
        run, f"model.pretrained_model={_q(flux)}")["model.pretrained_model"]
    no_config = tmp_path / "half"
    shutil.copytree(tiny_sd1_dir, no_config)
    (no_config / "unet" / "config.json").unlink()
    assert "unet/config.json is missing" in _errors(run, f"model.pretrained_model={_q(no_config)}")[
        "model.pretrained_model"]
    for folder, label in ((tiny_sd1_dir, "SD 1.x"), (tiny_sdxl_dir, "SDXL")):
        assert _errors(run, f"model.pretrained_model={_q(folder)}") == {}
        cfg = load_config(run, [f"model.pretrained_model={_q(folder)}"])
        assert describe_model(cfg) == f"base model: {label} diffusers folder {folder}"


def test_dry_run_says_device_and_precision(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _dry_run(run, capsys)
    assert rc == 0 and "base model: tiny:sd1 (built into lorakiln)" in out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device: {device}" in out and "precision fp32 (mixed_precision = 'no')" in out


def test_the_torch_free_answer_agrees_with_torch() -> None:
    """Without torch loaded the answer comes from torch's version.py and the driver; it must be
    the device `pick_device` picks."""
    version, cuda, hip = device_plan._torch_build()
    assert version == torch.__version__ and cuda == torch.version.cuda and hip == torch.version.hip
    without_torch = choose_device(use_torch=False)
    assert without_torch.device == choose_device(use_torch=True).device == (
        "cuda" if torch.cuda.is_available() else "cpu")
    if cuda is None and hip is None:
        assert "CPU-only build" in without_torch.why


@pytest.mark.parametrize(("choice", "precision", "expected"), [
    (DeviceChoice("cuda", "NVIDIA H100", (9, 0)), "bf16",
     "device: cuda (NVIDIA H100), mixed precision bf16 (U-Net and text encoders in bf16, LoRA weights and VAE in fp32)"),
    (DeviceChoice("cuda", "NVIDIA H100", (9, 0)), "no",
     "device: cuda (NVIDIA H100), precision fp32 (mixed_precision = 'no'; 'bf16' trains faster on this GPU)"),
    (DeviceChoice("cuda", "Tesla T4", (7, 5)), "bf16", "has no native bf16, so it is emulated and slow: use "
     "mixed_precision = 'fp16'"),
    (DeviceChoice("cuda", "Tesla T4", (7, 5)), "fp16", "mixed precision fp16 (U-Net and text encoders in fp16, "
     "LoRA weights and VAE in fp32, with loss scaling)"),
    (DeviceChoice("cpu", why="no GPU"), "no", "device: cpu (no GPU), precision fp32 (mixed_precision = 'no')"),
    (DeviceChoice("cpu", why="no GPU"), "fp16", "device: cpu (no GPU), mixed_precision = 'fp16': on the CPU the "
     "weights stay fp32 and only the forward pass runs under fp16 autocast with loss scaling; CPUs have little "
     "fp16 arithmetic, so this is much slower than 'no'"),
    (DeviceChoice("cpu", why="no GPU"), "bf16", "only the forward pass runs under bf16 autocast"),
])
def test_device_line_says_what_will_happen(choice: DeviceChoice, precision: str, expected: str) -> None:
    assert expected in device_line(choice, precision)


def test_hidden_gpus_and_cpu_builds_mean_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch-free path, as a dry run without torch loaded takes it."""
    monkeypatch.setattr(device_plan, "_from_torch", lambda: pytest.fail("torch must not be asked"))
    monkeypatch.setattr(device_plan, "_torch_build", lambda: ("2.9.0+cpu", None, None))
    assert choose_device(use_torch=False) == DeviceChoice("cpu", why="this PyTorch 2.9.0+cpu is a CPU-only build")
    monkeypatch.setattr(device_plan, "_torch_build", lambda: ("2.9.0+cu128", "12.8", None))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert choose_device(use_torch=False).why == "CUDA_VISIBLE_DEVICES hides every GPU"
    monkeypatch.setattr(device_plan, "_torch_build", lambda: None)
    assert choose_device(use_torch=False).why == "PyTorch is not installed"
