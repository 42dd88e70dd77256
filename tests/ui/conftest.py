"""Fixtures for the UI tests: a project folder with a tiny kohya dataset for real trainings."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lorakiln.ui.forms import field_specs
from lorakiln.ui.sandbox import Sandbox
from lorakiln.ui.train_form import load_form, to_component
from lorakiln.ui.train_tab import queue_for

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


@pytest.fixture
def project(tiny_project: Path, tiny_sd1_dir: Path) -> Iterator[Sandbox]:
    """A project with the tiny dataset in <project>/train and no run TOML, served with the tiny
    model's folder as a --models-dir."""
    box = Sandbox.for_project(tiny_project, model=[tiny_sd1_dir.parent])
    yield box
    for run in queue_for(box).runs():  # never leave a training behind a failed test
        if run.status == "running":
            queue_for(box).stop(run.id)
            queue_for(box).wait(run.id, timeout=60)


@pytest.fixture
def tiny_form(project: Sandbox, tiny_sd1_dir: Path) -> Callable[[int], tuple[dict, list]]:
    """`tiny_form(epochs)`: the new-project form of `project`, edited in its components as a user
    would (the tiny model, 64 px, rank 4, U-Net only): (extra keys, component values)."""
    def make(epochs: int) -> tuple[dict, list]:
        extra, msg, *components = load_form(project, "run.toml")
        assert "new form" in msg and extra == {}
        edits = {"model.pretrained_model": str(tiny_sd1_dir), "data.resolution": [64, 64],
                 "data.enable_bucket": False, "network.network_dim": 4, "network.network_train_unet_only": True,
                 "train.train_batch_size": 1, "train.max_train_epochs": epochs, "train.seed": 1}
        specs = {s.key: i for i, s in enumerate(field_specs())}
        for key, value in edits.items():
            components[specs[key]] = to_component(field_specs()[specs[key]], value)
        return extra, components

    return make
