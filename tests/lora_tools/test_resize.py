"""`lorakiln lora resize`: lossless at full rank, exact about what a lower rank keeps, kohya's
dynamic ranks and alpha rule, LoCon convs, LyCORIS refusals, and a result every reader loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakiln.cli import main
from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.convert import convert_lora
from lorakiln.lora_tools.files.info import inspect_lora
from lorakiln.lora_tools.files.lorafile import read_kohya_lora, write_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import LowRank
from lorakiln.lora_tools.resize.resize import resize_lora
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.export import addnet_model_hash, save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # 3×3, 32 → 32 channels on the tiny SD1


def _locon_file(path: Path, dtype: str = "float", *, algo: str = "lora", dim: int = 16) -> Path:
    """A LoCon of the tiny SD1 (dim 16 / alpha 8, conv 8 / 4) with random non-zero ups."""
    bundle = build_tiny_sd1_bundle(seed=0)
    kwargs = {"conv_dim": 8, "conv_alpha": 4} if algo == "lora" else {}
    net = create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=dim, alpha=dim / 2, algo=algo, **kwargs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, module in net.loras():
            for name, param in module.named_parameters():
                if "lora_up" in name:  # LoHa/LoKr values do not matter here: they are refused
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    net.remove()
    return save_kohya_lora(net, path, build_metadata(TrainingInfo(output_name="src"), net), dtype=dtype)


@pytest.fixture(scope="module")
def locon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _locon_file(tmp_path_factory.mktemp("resize") / "src.safetensors")


def _deltas(path: Path) -> dict[str, torch.Tensor]:
    lora = read_kohya_lora(path)
    return {key: lora.lora_factors(key).delta().double() for key in lora.modules}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def test_full_rank_resize_is_lossless(locon: Path, tmp_path: Path) -> None:
    result = resize_lora(locon, tmp_path / "same.safetensors", rank=16)
    before, after = _deltas(locon), _deltas(result.path)
    assert before.keys() == after.keys() and len(after) == 349  # 264 attention/MLP + 85 LoCon
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=1e-5, msg=key)
    assert all(r.energy == pytest.approx(1.0) for r in result.reports)
    tensors = load_file(str(result.path))
    # resizing never adds rank: the conv modules (rank 8 < 16) keep 8 and their alpha 4
    assert tensors[f"{CONV}.lora_down.weight"].shape == (8, 32, 3, 3) and float(tensors[f"{CONV}.alpha"]) == 4
    assert tensors[f"{UNET_Q}.lora_down.weight"].shape[0] == 16 and float(tensors[f"{UNET_Q}.alpha"]) == 8
    assert any("keep it" in n for n in result.notes)


def test_lower_rank_keeps_exactly_the_reported_energy(locon: Path, tmp_path: Path) -> None:
    source_bytes = locon.read_bytes()
    result = resize_lora(locon, tmp_path / "r4.safetensors", rank=4, conv_rank=2)
    assert locon.read_bytes() == source_bytes  # the input is never touched
    before, after = _deltas(locon), _deltas(result.path)
    for r in result.reports:
        old, new = before[r.key], after[r.key]
        residual = float((old - new).pow(2).sum() / old.pow(2).sum())
        assert residual == pytest.approx(1 - r.energy, abs=1e-6), r.key
        # Eckart–Young: the kept part is the SVD truncation of the old delta, computed here independently
        u, s, vh = torch.linalg.svd(old.flatten(1), full_matrices=False)
        k = 2 if r.kxk_conv else 4
        assert r.after == k and r.before == (8 if r.kxk_conv else 16)
        assert r.energy == pytest.approx(float(s[:k].pow(2).sum() / s.pow(2).sum()), abs=1e-7)
        torch.testing.assert_close(new.flatten(1), (u[:, :k] * s[:k]) @ vh[:k], atol=1e-6, rtol=1e-5)
    tensors = load_file(str(result.path))
    # kohya: new alpha = old scale × new rank (8/16·4 = 2; conv 4/8·2 = 1), LoCon shapes kept
    assert float(tensors[f"{UNET_Q}.alpha"]) == 2.0 and float(tensors[f"{CONV}.alpha"]) == 1.0
    assert tensors[f"{CONV}.lora_down.weight"].shape == (2, 32, 3, 3)
    assert tensors[f"{CONV}.lora_up.weight"].shape == (32, 2, 1, 1)
    assert tensors[f"{TE_Q}.lora_down.weight"].shape == (4, 32)
    md = _metadata(result.path)
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1"}
    assert md["ss_training_comment"] == "dimension is resized from 16 to 4 (conv: 2)"
    assert md["ss_output_name"] == "src" and md["ss_base_model_version"] == "sd_v1"  # source ss_* kept
    assert md["modelspec.title"] == "r4"
    assert md["sshs_model_hash"] == addnet_model_hash(result.path.read_bytes())
    record = json.loads(md["lorakiln_resize"])
    assert (record["method"], record["rank"], record["conv_rank"], record["from_rank"]) == ("fixed", 4, 2, 16)
    assert result.size_after < result.size_before


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _crafted(path: Path) -> Path:
    """Three rank-8 modules with known singular values (alpha 2 → scale 1/4, which the ratios ignore)."""
    spectra = {
        TE_Q: [10, 6, 3, 2.5, 1, 0.6, 0.3, 0.1],
        UNET_Q: [5, 5, 5, 5, 1, 1, 1, 1],
        CONV: [4, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4, 3.3],
    }
    shapes = {TE_Q: (32, 32), UNET_Q: (32, 32), CONV: (32, 32, 3, 3)}
    modules = {}
    for i, (key, sigma) in enumerate(spectra.items()):
        out, inn = shapes[key][0], int(torch.Size(shapes[key][1:]).numel())
        u, v = _orthonormal(out, 8, 2 * i), _orthonormal(inn, 8, 2 * i + 1)
        up = (u * torch.tensor(sigma, dtype=torch.float64) * 4).float()  # × 1/scale: applied σ are as listed
        down = v.T.float().reshape(8, *shapes[key][1:])
        modules[key] = LowRank(up[:, :, None, None] if down.dim() == 4 else up, down, 2.0, 1.0)
    return write_kohya_lora(path, modules, SD1)


@pytest.mark.parametrize(
    ("method", "param", "cap", "conv_cap", "expected"),
    [
        # sv_ratio: σ > σ_max/3.5 → 10, 6, 3 | all four 5s | all eight (then the caps)
        ("sv_ratio", 3.5, None, None, {TE_Q: 3, UNET_Q: 4, CONV: 8}),
        ("sv_ratio", 3.5, 6, 5, {TE_Q: 3, UNET_Q: 4, CONV: 5}),
        # sv_fro 0.9: first rank with Σσ²_kept ≥ 0.81·Σσ² (136 ≥ 123.7 | 100 ≥ 84.2 | 96.1 ≥ 86.7)
        ("sv_fro", 0.9, None, None, {TE_Q: 2, UNET_Q: 4, CONV: 7}),
        # sv_cumulative 0.8: first rank with Σσ_kept ≥ 0.8·Σσ (19 ≥ 18.8 | 20 ≥ 19.2 | 25.9 ≥ 23.4)
        ("sv_cumulative", 0.8, 2, None, {TE_Q: 2, UNET_Q: 2, CONV: 2}),  # --rank 2 caps convs too (default)
        ("sv_cumulative", 0.8, None, None, {TE_Q: 3, UNET_Q: 4, CONV: 7}),
    ],
)
def test_dynamic_methods_pick_kohyas_ranks(
    tmp_path: Path, method: str, param: float, cap: int | None, conv_cap: int | None, expected: dict[str, int]
) -> None:
    src = _crafted(tmp_path / "crafted.safetensors")
    result = resize_lora(src, tmp_path / "dyn.safetensors", rank=cap, conv_rank=conv_cap, dynamic=method,
                         dynamic_param=param)
    assert {r.key: r.after for r in result.reports} == expected
    tensors = load_file(str(result.path))
    for key, rank in expected.items():
        assert tensors[f"{key}.lora_down.weight"].shape[0] == rank
        assert float(tensors[f"{key}.alpha"]) == pytest.approx(0.25 * rank)  # old scale × new rank
    md = _metadata(result.path)
    assert md["ss_training_comment"] == f"Dynamic resize with {method}: {param:g} from 8"
    linear_ranks = {expected[TE_Q], expected[UNET_Q]}
    assert md["ss_network_dim"] == (str(linear_ranks.pop()) if len(linear_ranks) == 1 else "Dynamic")


def test_conv_rank_defaults_to_rank_and_precision_to_the_inputs(tmp_path: Path) -> None:
    src = _locon_file(tmp_path / "half.safetensors", dtype="fp16")
    out = resize_lora(src, tmp_path / "a.safetensors", rank=4).path
    tensors = load_file(str(out))
    assert tensors[f"{CONV}.lora_down.weight"].shape[0] == 4  # kohya: --new_conv_rank defaults to --new_rank
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    out = resize_lora(src, tmp_path / "b.safetensors", rank=4, save_precision="float").path
    assert {t.dtype for t in load_file(str(out)).values()} == {torch.float32}


@pytest.mark.parametrize(("algo", "name"), [("loha", "LoHa"), ("lokr", "LoKr")])
def test_loha_and_lokr_are_refused_naming_the_module(tmp_path: Path, algo: str, name: str) -> None:
    src = _locon_file(tmp_path / f"{algo}.safetensors", algo=algo, dim=4)
    with pytest.raises(LorakilnError, match=rf"module lora_\w+ is {name}.*LoRA/LoCon modules"):
        resize_lora(src, tmp_path / "out.safetensors", rank=2)
    assert not (tmp_path / "out.safetensors").exists()


def test_dora_modules_are_refused(locon: Path, tmp_path: Path) -> None:
    tensors = load_file(str(locon))
    tensors[f"{TE_Q}.dora_scale"] = torch.ones(1, 32)
    save_file(tensors, str(tmp_path / "dora.safetensors"), _metadata(locon))
    with pytest.raises(LorakilnError, match=rf"{TE_Q}.*dora_scale"):
        resize_lora(tmp_path / "dora.safetensors", tmp_path / "out.safetensors", rank=2)


def test_diffusers_and_non_lora_files_are_refused_with_what_they_are(locon: Path, tmp_path: Path) -> None:
    diffusers = convert_lora(locon, tmp_path / "d.safetensors", "diffusers").path
    with pytest.raises(LorakilnError, match="diffusers-format LoRA.*lorakiln lora convert .* --to kohya"):
        resize_lora(diffusers, tmp_path / "out.safetensors", rank=2)
    save_file({"emb_params": torch.zeros(2, 768)}, str(tmp_path / "emb.safetensors"))
    with pytest.raises(LorakilnError, match="no LoRA keys: it looks like an SD 1.x textual-inversion embedding"):
        resize_lora(tmp_path / "emb.safetensors", tmp_path / "out.safetensors", rank=2)


def test_result_applies_to_a_tiny_sd1_and_reads_in_lora_info(locon: Path, tmp_path: Path) -> None:
    out = resize_lora(locon, tmp_path / "small.safetensors", rank=4).path
    bundle = build_tiny_sd1_bundle(seed=0)
    layer = next(m for n, m in bundle.text_encoders[0].named_modules()
                                 if n.endswith("encoder.layers.0.self_attn.q_proj"))
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = layer(x)
        applied = apply_lora_file(bundle, out)
        patched = layer(x)
    assert len(applied.modules) == 349
    expected = read_kohya_lora(out).lora_factors(TE_Q).delta()
    torch.testing.assert_close(patched - plain, x @ expected.T, atol=1e-5, rtol=1e-4)
    info = inspect_lora(out)
    assert (info.format, info.family) == ("kohya", "sd1")
    assert info.hashes["sshs_model_hash_matches"] is True
    assert {rank for block in info.blocks for rank in block.ranks} == {4}
    assert info.training["network"].startswith("networks.lora, dim 4, alpha 2.0")


def test_cli_resize(locon: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.safetensors"
    assert main(["lora", "resize", str(locon), str(out), "--dynamic", "sv_fro", "--dynamic-param", "0.9",
                 "--rank", "12", "--save-precision", "fp16", "--verbose"]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.startswith(UNET_Q))
    assert "rank   16 → " in line and "energy" in line and "fro" in line
    assert f"wrote {out}" in stdout and "Frobenius norm kept: mean" in stdout and "size: " in stdout
    assert _metadata(out)["ss_network_dim"] == "Dynamic"
    # error cases: no rank rule, an existing output, a bad dynamic target, the input as output
    for argv, message in [
        ([str(locon), str(tmp_path / "x.safetensors")], "give the new rank with --rank N"),
        ([str(locon), str(out), "--rank", "4"], "exists; pass --force"),
        ([str(locon), str(tmp_path / "x.safetensors"), "--dynamic", "sv_fro", "--dynamic-param", "1.5"],
         "sv_fro target must be in"),
        ([str(locon), str(locon), "--rank", "4", "--force"], "never writes over its inputs"),
    ]:
        assert main(["lora", "resize", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
