"""Fixtures for the UI tests: a project folder with a tiny kohya dataset for real trainings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

# The tiny captioners of tests/captioning (its conftest puts that folder on the path only when
# that folder is collected too).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "captioning"))


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tmp_path` with a 2-image kohya dataset (5 repeats) in `train/5_zwx`; trainings started from
    it run single-threaded (2-core CI) with a private LORAKILN_HOME."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    sub = tmp_path / "train" / "5_zwx"
    sub.mkdir(parents=True)
    for i in range(2):
        img = Image.new("RGB", (64, 64), (60 + 100 * i, 120, 200))
        ImageDraw.Draw(img).ellipse([10 + 10 * i, 12, 44, 46], fill=(140, 60, 170))
        img.save(sub / f"z{i}.png")
        (sub / f"z{i}.txt").write_text("photo of zwx", encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="session")
def epoch_loras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training output folder as the trainer leaves it: last-000001, last (tiny SD1, dim 2), plus
    an embedding file and the diffusers copy that a LoRA list must leave out."""
    import torch

    from lorakiln.models.family import SD1
    from lorakiln.models.tiny import build_tiny_sd1_bundle
    from lorakiln.networks.export import save_kohya_lora
    from lorakiln.networks.metadata import TrainingInfo, build_metadata
    from lorakiln.networks.network import create_lora_network

    folder = tmp_path_factory.mktemp("output")
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=2, alpha=2)
    gen = torch.Generator().manual_seed(0)
    for stem in ("last-000001", "last"):
        with torch.no_grad():
            for _, m in net.loras():
                m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.2)
        save_kohya_lora(net, folder / f"{stem}.safetensors", build_metadata(TrainingInfo(output_name="last"), net))
    net.remove()
    (folder / "last_emb.safetensors").write_bytes(b"")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"")
    return folder


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour-reading WD14 tagger of tests/captioning (red → "long hair, solo, hatsune miku")."""
    from captioning_support import build_tiny_wd14

    return build_tiny_wd14(tmp_path_factory.mktemp("wd14") / "wd14")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BLIP of tests/captioning: every caption is exactly `min_length` tokens long."""
    from captioning_support import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip", seed=0)
