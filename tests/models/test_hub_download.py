"""Base models and VAEs named by hub id fail within seconds when the hub cannot be reached, with
the advice (a local folder or file, the `hf download` command, HF_HUB_OFFLINE=1), and load from
the local cache without the network.

No test touches the network: the hub is `HF_HUB_OFFLINE` or a closed local port; the cache is a
private `HF_HOME` laid out as huggingface_hub lays it out."""

from __future__ import annotations

import shlex
import shutil
import socket
import time
from pathlib import Path

import pytest

from lorakiln.errors import ModelLoadError
from lorakiln.models.hub_download import HUB_ALLOW, download_command, ignore_patterns
from lorakiln.models.loading import load_base_model, load_vae


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home that no other cache variable overrides, and a hub endpoint on a
    closed local port (unreachable at once)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    return tmp_path / "hf"


def cache_repo(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Put `folder`'s files into the hub cache as a download of `repo_id` (main) leaves them."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")


@pytest.mark.parametrize("offline", [False, True])
def test_unreachable_hub_fails_fast_with_the_advice(hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                    offline: bool) -> None:
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_base_model("someorg/base-model")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "could not get the base model 'someorg/base-model' from the Hugging Face hub" in message
    assert str(hf_home / "hub") in message  # the cache that was searched
    assert "local diffusers folder or a single-file .safetensors checkpoint" in message
    assert "hf download someorg/base-model --include model_index.json" in message
    if offline:
        assert "HF_HUB_OFFLINE is set" in message and "set HF_HUB_OFFLINE=1" not in message
    else:
        assert "cannot reach the hub (127.0.0.1)" in message and "set HF_HUB_OFFLINE=1" in message
    with pytest.raises(ModelLoadError, match=r"could not get the VAE 'someorg/vae'.*HF_HUB_OFFLINE"):
        load_vae("someorg/vae")


def test_cached_model_loads_with_the_hub_out_of_reach(hf_home: Path, tiny_sd1_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache_repo(hf_home, "someorg/tiny", tiny_sd1_dir)
    bundle = load_base_model("someorg/tiny")
    assert bundle.name == "someorg/tiny" and Path(bundle.extra["folder"]).is_relative_to(hf_home / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_base_model("someorg/tiny").family.name == "sd1"


def test_download_command_fetches_what_the_loader_reads() -> None:
    command = download_command("org/model", HUB_ALLOW, ignore_patterns(allow_pickle=False))
    argv = shlex.split(command)
    assert argv[:3] == ["hf", "download", "org/model"]
    includes = [argv[i + 1] for i, a in enumerate(argv) if a == "--include"]
    excludes = [argv[i + 1] for i, a in enumerate(argv) if a == "--exclude"]
    assert includes == HUB_ALLOW and "*.bin" in excludes and "*.fp16.*" in excludes
    assert argv[-2:] == ["--local-dir", "models/model"]
    assert "*.bin" not in ignore_patterns(allow_pickle=True)
