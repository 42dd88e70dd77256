"""The end of `lorakiln train` names only the clients that load the file it wrote, by the table
`lorakiln lora info` prints (`networks.clients`): a LoHa/LoKr or DoRA file gets no diffusers line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lorakiln.cli import main
from lorakiln.lora_tools.files.info import FORMAT_CLIENTS as INFO_TABLE
from lorakiln.lora_tools.files.info import inspect_lora
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.clients import FORMAT_CLIENTS, kohya_file_layout, loaded_by
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.network import create_lora_network
from lorakiln.safetensors_check import read_layout
from lorakiln.training.command import client_lines


def test_one_table_for_lora_info_and_the_trainer() -> None:
    assert INFO_TABLE is FORMAT_CLIENTS
    assert loaded_by("kohya") == ("AUTOMATIC1111", "ComfyUI", "diffusers")
    assert loaded_by("lycoris") == ("AUTOMATIC1111", "ComfyUI")
    assert loaded_by("diffusers") == loaded_by("diffusers-old") == ("diffusers",)
    assert loaded_by("mixed") == ()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A file per adapter kind as the trainer writes it (tiny SD 1.x, random up weights)."""
    folder = tmp_path_factory.mktemp("advice")
    bundle = build_tiny_sd1_bundle(seed=0)
    out = {}
    kinds = {"lora": {}, "locon": {"algo": "locon"}, "loha": {"algo": "loha"}, "lokr": {"algo": "lokr"},
             "dora": {"dora_wd": True}}
    for name, kwargs in kinds.items():
        net = create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=4, **kwargs)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01)
        out[name] = save_kohya_lora(net, folder / f"{name}.safetensors")
        net.remove()
    return out


@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "lokr", "dora"])
def test_layout_is_the_one_lora_info_reports(written: dict[str, Path], kind: str) -> None:
    path = written[kind]
    assert kohya_file_layout(read_layout(path).tensors) == inspect_lora(path, verify_hash=False).format
    lines = client_lines(path)
    assert lines[0].startswith(f"AUTOMATIC1111 / Forge: copy it to models/Lora and add <lora:{kind}:0.8>")
    assert lines[1].startswith("ComfyUI: copy it to models/loras")
    if kind in ("lora", "locon"):
        assert lines[2] == f'diffusers: pipe.load_lora_weights("{path}")' and len(lines) == 3
    else:
        assert not any("load_lora_weights" in line for line in lines)
        assert lines[2].startswith("diffusers: cannot load this file (LyCORIS layout")


def test_a_loha_run_ends_without_the_diffusers_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = tmp_path / "train" / "1_zwx"
    sub.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (120 * i, 60, 200)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text("zwx, a toy", encoding="utf-8")
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\nresolution = 64\n'
                    'min_bucket_reso = 64\nmax_bucket_reso = 64\ncheck_images = false\n[network]\n'
                    'network_module = "loha"\nnetwork_dim = 2\nnetwork_alpha = 2\n[train]\nmax_train_steps = 1\n'
                    '[output]\noutput_dir = "out"\noutput_name = "zwx"\n', encoding="utf-8")
    assert main(["train", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "LoRA written:" in out and "AUTOMATIC1111 / Forge: copy it to models/Lora" in out
    assert "load_lora_weights" not in out and "diffusers: cannot load this file" in out
    assert "device: cpu" in out or "device: cuda" in out  # the trainer says where it runs, too
