"""Caption models are resolved before anything slow: a folder, the local Hugging Face cache, or a
download only when the hub answers within seconds; otherwise `ModelUnavailable`, fast.

No test touches the network: the hub is `HF_HUB_OFFLINE`, a closed local port, or a probe that
never answers; the cache is a private `HF_HOME` laid out as huggingface_hub lays it out."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from captioning_support import MakeImage

from lorakiln.captioning import model_source
from lorakiln.captioning.blip import BlipOptions, caption_with_blip, load_blip
from lorakiln.captioning.files import OutputOptions
from lorakiln.captioning.model_source import (
    ModelUnavailable,
    hub_cache_dir,
    hub_unreachable,
    resolve_caption_model,
)
from lorakiln.captioning.tagger import load_tagger


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home; no other cache variable overrides it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


def cache_repo(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Put `folder`'s files into the hub cache as a download of `repo_id` (main) leaves them."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")


def test_cache_dir_follows_huggingface_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert hub_cache_dir() == hf_home / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub_cache_dir() == tmp_path / "c"


def test_probe_is_bounded_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.monotonic()
    reason = hub_unreachable(f"http://127.0.0.1:{closed_port()}", timeout=2)
    assert reason is not None and "127.0.0.1" in reason and time.monotonic() - start < 2
    # a DNS lookup or a TLS handshake that hangs: the probe gives up after its timeout
    monkeypatch.setattr(model_source.hub_access, "_ask", lambda endpoint, timeout: time.sleep(5))
    start = time.monotonic()
    assert "within 0.3 s" in str(hub_unreachable("https://huggingface.co", timeout=0.3))
    assert time.monotonic() - start < 1.5
    monkeypatch.setattr(model_source.hub_access, "_ask", lambda endpoint, timeout: None)
    assert hub_unreachable("https://huggingface.co") is None


@pytest.mark.parametrize("offline", [True, False])
def test_missing_hub_model_fails_fast(hf_home: Path, monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        load_blip("org/blip-model", device="cpu")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "could not download the BLIP model 'org/blip-model'" in message and "--model" in message
    assert str(hf_home / "hub") in message and "hf download org/blip-model" in message
    assert err.value.repo_id == "org/blip-model" and err.value.page.endswith("/org/blip-model")
    assert ("HF_HUB_OFFLINE" if offline else "127.0.0.1") in err.value.reason
    with pytest.raises(ModelUnavailable, match="WD14 tagger model 'org/tagger'"):
        load_tagger("org/tagger", device="cpu")


def test_cached_models_load_without_the_network(hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiny_blip_dir: Path, tiny_wd14_dir: Path,
                                                make_image: MakeImage, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(hf_home, "org/tiny-blip", tiny_blip_dir)
    cache_repo(hf_home, "org/tiny-wd14", tiny_wd14_dir)
    source = resolve_caption_model("org/tiny-wd14", what="WD14 tagger", needs=("model.onnx", "selected_tags.csv"),
                                   files="", download="")
    assert source.local_only and source.cached[0].name == "model.onnx"
    assert load_tagger("org/tiny-wd14", device="cpu").size == 16
    make_image(tmp_path / "data" / "a.png")
    summary = caption_with_blip(tmp_path / "data", BlipOptions(model="org/tiny-blip", device="cpu"),
                                OutputOptions(progress=False))
    assert len(summary.written) == 1 and (tmp_path / "data" / "a.txt").read_text().strip()


def test_folders_and_typos_are_not_hub_ids(tmp_path: Path, tiny_wd14_dir: Path) -> None:
    assert resolve_caption_model(str(tiny_wd14_dir), what="x", needs=(), files="", download="").folder == tiny_wd14_dir
    with pytest.raises(model_source.ModelLoadError, match="no such folder"):
        resolve_caption_model(str(tmp_path / "models" / "gone") + "/", what="x", needs=(), files="", download="")


@pytest.mark.parametrize("method", ["blip", "tagger"])
def test_caption_command_fails_fast_with_the_hub_out_of_reach(hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                              make_image: MakeImage, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], method: str) -> None:
    """`lorakiln caption` itself, as a user runs it offline: exit 2 within seconds, with the advice."""
    from lorakiln.cli import main

    make_image(tmp_path / "photos" / "a.png")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert main(["caption", str(tmp_path / "photos"), "--method", method, "--model", "org/caption-model"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "could not download" in err and "'org/caption-model'" in err and "Pass a local folder with --model" in err
    assert "hf download org/caption-model" in err and "set HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "photos" / "a.txt").exists()
