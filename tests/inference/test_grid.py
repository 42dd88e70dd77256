"""X/Y/Z grids: axes, one image per Z, LoRAs read once, the epochs × strengths shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakiln.cli import main
from lorakiln.errors import ConfigError
from lorakiln.inference.grid import epoch_files, epochs_strengths, parse_axis, xyz_grid
from lorakiln.inference.infotext import GenerationParams
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks import apply as apply_module
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

P = GenerationParams(prompt="photo of zwx <lora:last:1.0>", steps=2, sampler="Euler", cfg_scale=5, seed=3,
                     width=64, height=64, schedule_type=None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training output folder: last-000001, last-000002 and last (plus files to ignore)."""
    folder = tmp_path_factory.mktemp("out")
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=2, alpha=2)
    for i, stem in enumerate(["last-000001", "last-000002", "last"]):
        with torch.no_grad():
            for _, m in net.loras():
                m.lora_up.weight.fill_(0.05 * (i + 1))
        save_kohya_lora(net, folder / f"{stem}.safetensors", build_metadata(TrainingInfo(output_name="last"), net))
    (folder / "last_emb.safetensors").write_bytes(b"")  # not a LoRA: ignored by the shortcut
    net.remove()
    return folder


def test_parse_axis_and_errors() -> None:
    axis = parse_axis("prompt s/r: last, last-000001")
    assert axis.kind == "Prompt S/R" and axis.values == ("last", "last-000001")
    with pytest.raises(ConfigError, match="did you mean 'Steps'"):
        parse_axis("Stepz: 1, 2")
    with pytest.raises(ConfigError, match="first value must appear"):
        parse_axis("Prompt S/R: cat, dog").apply(P, "dog")


def test_epoch_files_orders_like_the_seed(run_dir: Path) -> None:
    assert epoch_files(run_dir) == ("last", ["last-000001", "last-000002", "last"])


def test_grid_cells_and_lora_files_read_once(run_dir: Path, monkeypatch) -> None:
    reads: list[str] = []
    real = apply_module.read_lora_checked
    monkeypatch.setattr(apply_module, "read_lora_checked", lambda p: reads.append(Path(p).stem) or real(p))
    bundle = build_tiny_sd1_bundle(seed=0)
    grids = xyz_grid(bundle, P, parse_axis("Prompt S/R: last, last-000001, last-000002"),
                     parse_axis("Prompt S/R: 1.0, 0.5"), parse_axis("Steps: 2, 3"), lora_dir=run_dir, progress=False)
    assert len(grids) == 2  # one per Z value
    image, cells = grids[0]
    assert len(cells) == 6 and {c.params.seed for c in cells} == {3}
    assert image.width >= 3 * 64 and image.height >= 2 * 64
    assert sorted(reads) == ["last", "last-000001", "last-000002"]  # each file read once for 12 cells
    assert cells[0].params.prompt == "photo of zwx <lora:last:1.0>"
    assert cells[4].params.prompt == "photo of zwx <lora:last-000001:0.5>"


def test_epochs_axis_keeps_a_trigger_word_named_like_the_lora(tmp_path: Path) -> None:
    """The quickstart names its LoRA "zwx" after its token: only the tag may be swapped."""
    for stem in ["zwx-000002", "zwx"]:
        (tmp_path / f"{stem}.safetensors").write_bytes(b"")
    params, x, y = epochs_strengths(tmp_path, GenerationParams(prompt="a zwx on a grey background"))
    assert x.names == ["zwx-000002", "zwx"] and y.names[:2] == ["1.0", "0.9"]  # training order
    assert params.prompt == "a zwx on a grey background, <lora:zwx-000002:1.0>"  # S/R's first value
    cell = y.apply(x.apply(params, x.values[1]), y.values[1])
    assert cell.prompt == "a zwx on a grey background, <lora:zwx:0.9>"
    for written in ("1", "0.8"):  # A1111 writes `<lora:zwx:1>`; a paste may carry any strength
        params, x, y = epochs_strengths(tmp_path, GenerationParams(prompt=f"a zwx <lora:zwx:{written}>"))
        assert params.prompt == "a zwx <lora:zwx-000002:1.0>"  # the strengths axis sets every cell's
        assert y.apply(x.apply(params, x.values[1]), y.values[2]).prompt == "a zwx <lora:zwx:0.8>"
    _, _, plain = epochs_strengths(tmp_path, GenerationParams(prompt="a zwx <lora:zwx:0.8:0.5>"))
    assert plain.values[0] == "1.0"  # per-part strengths: plain A1111 S/R, whose error names the value


def test_epochs_axis_swaps_a_pivotal_runs_embeddings_with_its_lora(tmp_path: Path) -> None:
    """zwx-000002 pairs with zwx-000002_emb: each column shows one epoch's LoRA and tokens."""
    for stem in ["zwx-000002", "zwx", "zwx-000002_emb", "zwx_emb"]:
        (tmp_path / f"{stem}.safetensors").write_bytes(b"")
    params, x, _ = epochs_strengths(tmp_path, GenerationParams(prompt="a zwx_emb on a grey background"))
    assert x.names == ["zwx-000002", "zwx"]
    assert params.prompt == "a zwx-000002_emb on a grey background, <lora:zwx-000002:1.0>"
    assert x.apply(params, x.values[1]).prompt == "a zwx_emb on a grey background, <lora:zwx:1.0>"
    # "zwx" also stands alone: a whole-stem swap would rename it, so only the tag moves
    params, x, _ = epochs_strengths(tmp_path, GenerationParams(prompt="a zwx_emb zwx"))
    assert x.apply(params, x.values[0]).prompt == "a zwx_emb zwx, <lora:zwx-000002:1.0>"
    assert x.apply(params, x.values[1]).prompt == "a zwx_emb zwx, <lora:zwx:1.0>"
    (tmp_path / "zwx-000002_emb.safetensors").unlink()  # an epoch without its embeddings: tag only
    params, x, _ = epochs_strengths(tmp_path, GenerationParams(prompt="a zwx_emb"))
    assert x.apply(params, x.values[0]).prompt == "a zwx_emb, <lora:zwx-000002:1.0>"


def test_cli_compare_epochs(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    code = main(["grid", "--model", "tiny:sd1", "--compare-epochs", str(run_dir), "--prompt", "photo of zwx",
                 "--steps", "2", "--size", "64x64", "--seed", "1", "--y", "Prompt S/R: 1.0, 0.5",
                 "--output-dir", str(tmp_path / "grids")])
    assert code == 0
    assert (tmp_path / "grids" / "xyz_grid-0000.png").is_file()


def test_the_seeds_xy_example_is_one_5x6_labelled_grid(tmp_path: Path) -> None:
    """X = last, last-000001 … last-000004; Y = 1.0, 0.9 … 0.5 (the kohya_ss walkthrough, "X/Y/Z Plots")."""
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=2, alpha=2)
    stems = ["last", "last-000001", "last-000002", "last-000003", "last-000004"]
    gen = torch.Generator().manual_seed(0)
    for stem in stems:  # independent random weights: no two epoch × strength products coincide
        with torch.no_grad():
            for _, m in net.loras():
                m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.1)
        save_kohya_lora(net, tmp_path / f"{stem}.safetensors", build_metadata(TrainingInfo(output_name="last"), net))
    net.remove()
    x = parse_axis("Prompt S/R: " + ", ".join(stems))
    y = parse_axis("Prompt S/R: 1.0, 0.9, 0.8, 0.7, 0.6, 0.5")
    [(image, cells)] = xyz_grid(build_tiny_sd1_bundle(seed=0), P, x, y, lora_dir=tmp_path, progress=False)
    import numpy as np

    assert len(cells) == 30
    w, h = cells[0].image.size
    left, top = image.width - 5 * w, image.height - 6 * h
    assert left > 0 and top > 0  # room for the labels
    pixels = np.asarray(image.convert("L"))
    assert (pixels[:top, left:] < 128).any() and (pixels[top:, :left] < 128).any()  # label text drawn
    distinct = {np.asarray(c.image).tobytes() for c in cells}
    assert len(distinct) == 30  # every epoch × strength cell differs
