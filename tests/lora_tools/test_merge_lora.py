"""`lora merge` without a base model (LoRAs into one LoRA) on tiny SD 1.x files: exact concatenation
equals Σ wᵢ·ΔWᵢ and the hooked inputs; SVD is lossless at full rank and keeps the reported energy
below it; LoHa/LoKr go through SVD (with --model for conv shapes); TIES/DARE land in the file; CLI
errors name the file or value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_merge_support import kohya_deltas, outputs, save_lora
from safetensors import safe_open
from safetensors.torch import load_file

from lorakiln.cli import main
from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.merge.merge import merge
from lorakiln.lora_tools.merge.options import MergeOptions, rank_spec
from lorakiln.lora_tools.merge.task import dare, module_generator, ties
from lorakiln.models.family import SDXL
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.apply import apply_lora_file


def hooked(files: list[tuple[Path, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    bundle = build_tiny_sd1_bundle(seed=0)
    for path, te, unet in files:
        apply_lora_file(bundle, path, te=te, unet=unet)
    return outputs(bundle)


def assert_outputs_close(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-5)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("merge-inputs")
    return {
        # kohya LoCon: text encoder + U-Net attention (rank 4) + 3×3 convs (rank 2)
        "a": save_lora(d / "a.safetensors", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, seed=1),
        # U-Net attention only, another rank and alpha: modules the other file lacks and vice versa
        "b": save_lora(d / "b.safetensors", dim=2, alpha=1.0, train_text_encoder=False, seed=2),
        "loha": save_lora(d / "loha.safetensors", algo="loha", dim=2, alpha=1.0, seed=3),
        "loha_te": save_lora(d / "loha_te.safetensors", algo="loha", dim=2, alpha=1.0, train_unet=False, seed=4),
        "lokr": save_lora(d / "lokr.safetensors", algo="lokr", dim=2, alpha=1.0, lokr_factor=4, seed=5),
        "xl": save_lora(d / "xl.safetensors", SDXL, dim=2, alpha=1.0, train_unet=False, seed=6),
    }


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def test_concat_file_delta_is_the_weighted_sum_and_keeps_every_module(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ab.safetensors"
    result = merge([f"{files['a']}:0.8:0.6", f"{files['b']}:-0.5"], out)
    assert result.method == "concat"
    a, b, merged = kohya_deltas(files["a"]), kohya_deltas(files["b"]), kohya_deltas(out)
    assert set(merged) == set(a) | set(b) and set(a) - set(b) and set(b) <= set(a)
    tensors = load_file(str(out))
    for key, delta in merged.items():
        w_a = 0.6 if key.startswith("lora_unet_") else 0.8
        expected = w_a * a[key] + (-0.5 * b[key] if key in b else 0)
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)
        rank = tensors[f"{key}.lora_down.weight"].shape[0]
        assert float(tensors[f"{key}.alpha"]) == rank  # alpha = new rank: scale 1
    conv = next(k for k in sorted(a) if k.endswith("resnets_0_conv1"))  # a 3×3 conv: LoCon conv_dim 2
    attn = next(k for k in sorted(b) if k.endswith("attn1_to_q"))
    kernel = load_file(str(files["a"]))[f"{conv}.lora_down.weight"].shape[1:]
    assert tensors[f"{conv}.lora_down.weight"].shape == (2, *kernel) and len(kernel) == 3  # only in a: its rank
    assert tensors[f"{attn}.lora_down.weight"].shape[0] == 4 + 2  # ranks add
    md = _metadata(out)
    record = json.loads(md["lorakiln_merge"])
    assert record["method"] == "concat"
    assert [(r["file"], r["te"], r["unet"]) for r in record["loras"]] == [("a.safetensors", 0.8, 0.6),
                                                                          ("b.safetensors", -0.5, -0.5)]
    assert record["loras"][0]["sshs_model_hash"] == _metadata(files["a"])["sshs_model_hash"]
    assert md["ss_output_name"] == "ab" and md["ss_network_module"] == "networks.lora"
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_network_dim"] == "Dynamic"
    assert "ss_tag_frequency" not in md or md["ss_tag_frequency"] == _metadata(files["b"]).get("ss_tag_frequency")


def test_concat_through_the_generator_equals_both_files_hooked(files: dict[str, Path], tmp_path: Path) -> None:
    out = merge([f"{files['a']}:0.8:0.6", f"{files['b']}:-0.5"], tmp_path / "ab.safetensors").path
    expected = hooked([(files["a"], 0.8, 0.6), (files["b"], -0.5, -0.5)])
    assert_outputs_close(hooked([(out, 1.0, 1.0)]), expected)
    base = outputs(build_tiny_sd1_bundle(seed=0))
    assert not torch.allclose(base[0], expected[0], atol=1e-3) and not torch.allclose(base[1], expected[1], atol=1e-3)


def test_svd_merge_is_lossless_at_full_rank_and_keeps_the_reported_energy(files: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    inputs = [f"{files['a']}:1", f"{files['b']}:0.5"]
    exact = kohya_deltas(merge(inputs, tmp_path / "concat.safetensors").path)
    full = merge(inputs, tmp_path / "full.safetensors", options=MergeOptions(ranks=rank_spec(64, None, None, None),
                                                                            save_precision="float"))
    assert full.method == "svd" and full.energy == pytest.approx(1.0)
    assert all(r.energy == pytest.approx(1.0) for r in full.reports)
    for key, delta in kohya_deltas(full.path).items():
        torch.testing.assert_close(delta, exact[key], rtol=1e-4, atol=1e-6)
    low = merge(inputs, tmp_path / "r1.safetensors", options=MergeOptions(ranks=rank_spec(1, None, None, None)))
    merged = kohya_deltas(low.path)
    total = kept = 0.0
    for report in low.reports:
        want, got = exact[report.key].double(), merged[report.key].double()
        assert report.after == 1
        assert got.pow(2).sum() / want.pow(2).sum() == pytest.approx(report.energy, rel=1e-4)
        assert (want - got).pow(2).sum() / want.pow(2).sum() == pytest.approx(1 - report.energy, rel=1e-3, abs=1e-6)
        total, kept = total + float(want.pow(2).sum()), kept + float(got.pow(2).sum())
    assert low.energy == pytest.approx(kept / total, rel=1e-4) and low.energy < 0.99
    dynamic = merge(inputs, tmp_path / "dyn.safetensors", options=MergeOptions(ranks=rank_spec(3, None, "sv_fro", 0.9)))
    assert all(1 <= r.after <= 3 for r in dynamic.reports)
    assert all(r.fro >= 0.9 - 1e-6 or r.after == 3 for r in dynamic.reports)  # sv_fro target, or the cap
    assert len({r.after for r in dynamic.reports}) > 1  # ranks chosen per module


def test_loha_and_lokr_go_through_svd_and_need_a_model_for_conv_shapes(files: dict[str, Path], tmp_path: Path,
                                                                       tiny_sd1_file: Path) -> None:
    full = MergeOptions(ranks=rank_spec(10_000, None, None, None), save_precision="float")
    with pytest.raises(LorakilnError, match=r"loha.safetensors: .* is a loha module; .*add --rank N"):
        merge([files["loha"]], tmp_path / "x.safetensors")
    with pytest.raises(LorakilnError, match=r"weight shape the file does not record.*--model BASE"):
        merge([files["loha"]], tmp_path / "x.safetensors", options=full)
    assert not (tmp_path / "x.safetensors").exists()
    # text-encoder modules are always Linear, so a TE-only LoHa needs no model
    te = merge([f"{files['loha_te']}:0.7"], tmp_path / "te.safetensors", options=full).path
    assert_outputs_close(hooked([(te, 1.0, 1.0)]), hooked([(files["loha_te"], 0.7, 0.7)]))
    # with --model (and --to lora) the shapes come from the base; full rank reproduces the hooks
    out = merge([f"{files['loha']}:0.7", f"{files['lokr']}:-0.4:1.2"], tmp_path / "lyco.safetensors",
                model=tiny_sd1_file, to="lora", options=full)
    assert out.kind == "lora" and out.energy == pytest.approx(1.0)
    assert_outputs_close(hooked([(out.path, 1.0, 1.0)]),
                         hooked([(files["loha"], 0.7, 0.7), (files["lokr"], -0.4, 1.2)]))


def test_ties_and_dare_results_are_what_task_merge_computes(files: dict[str, Path], tmp_path: Path) -> None:
    full = rank_spec(10_000, None, None, None)
    a, b = kohya_deltas(files["a"]), kohya_deltas(files["b"])
    shared = sorted(set(a) & set(b))
    out = merge([f"{files['a']}:1", f"{files['b']}:0.5"], tmp_path / "ties.safetensors",
                options=MergeOptions(method="ties", density=0.3, ranks=full, save_precision="float"))
    got = kohya_deltas(out.path)
    for key in shared[:: max(1, len(shared) // 8)]:
        torch.testing.assert_close(got[key], ties([a[key], 0.5 * b[key]], 0.3), rtol=1e-4, atol=1e-6)
    # DARE: seeded, reproducible, different with another seed
    dare_opts = MergeOptions(method="dare", density=0.5, seed=3, ranks=full, save_precision="float")
    first = kohya_deltas(merge([files["a"], files["b"]], tmp_path / "d1.safetensors", options=dare_opts).path)
    again = kohya_deltas(merge([files["a"], files["b"]], tmp_path / "d2.safetensors", options=dare_opts).path)
    other = MergeOptions(method="dare", density=0.5, seed=4, ranks=full, save_precision="float")
    third = kohya_deltas(merge([files["a"], files["b"]], tmp_path / "d3.safetensors", options=other).path)
    key = shared[0]
    torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert not torch.allclose(first[key], third[key])
    gens = [module_generator(3, 0, key), module_generator(3, 1, key)]
    torch.testing.assert_close(first[key], dare([a[key].reshape(first[key].shape), b[key]], 0.5, gens),
                               rtol=1e-4, atol=1e-6)


def test_cli_lora_merge_and_its_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.safetensors"
    assert main(["lora", "merge", "--lora", f"{files['a']}:0.8", "--lora", str(files["b"]), "--rank", "2",
                 "--save-precision", "fp16", str(out)]) == 0
    report = capsys.readouterr().out
    assert "by SVD of the summed deltas" in report and "energy kept" in report and "a.safetensors:0.8" in report
    assert load_file(str(out))[next(iter(load_file(str(out))))].dtype == torch.float16

    def error(*argv: str) -> str:
        assert main(["lora", "merge", *argv]) == 2
        return capsys.readouterr().err

    missing = tmp_path / "nope.safetensors"
    assert f"{missing}: no such LoRA file" in error("--lora", str(missing), str(tmp_path / "o.safetensors"))
    assert "bad strength ':x'" in error("--lora", f"{files['a']}:x", str(tmp_path / "o.safetensors"))
    assert "bad strength ':1:2:3'" in error("--lora", f"{files['a']}:1:2:3", str(tmp_path / "o.safetensors"))
    assert "expected a .safetensors LoRA file" in error("--lora", "a.pt:1", str(tmp_path / "o.safetensors"))
    mixed = error("--lora", str(files["a"]), "--lora", str(files["xl"]), str(tmp_path / "o.safetensors"))
    assert "different base models" in mixed and "xl.safetensors is sdxl" in mixed
    assert "--density applies to" in error("--lora", str(files["a"]), "--density", "0.5", str(tmp_path / "o.safetensors"))
    assert "needs --density" in error("--lora", str(files["a"]), "--method", "ties", "--rank", "4",
                                      str(tmp_path / "o.safetensors"))
    assert "makes full deltas; pass --rank" in error("--lora", str(files["a"]), "--method", "ties", "--density",
                                                     "0.2", str(tmp_path / "o.safetensors"))
    assert "--seed sets DARE" in error("--lora", str(files["a"]), "--seed", "1", str(tmp_path / "o.safetensors"))
    if not torch.cuda.is_available():
        assert "no CUDA device" in error("--lora", str(files["a"]), "--device", "cuda", str(tmp_path / "o.safetensors"))
    assert "exists; pass --force" in error("--lora", str(files["a"]), str(out))
    assert "never writes over its inputs" in error("--lora", str(files["a"]), "--force", str(files["a"]))
    assert not (tmp_path / "o.safetensors").exists()
