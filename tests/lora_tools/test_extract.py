"""`lorakiln lora extract`: base + a known low-rank delta comes back as that delta, under the
trainer's key names; unchanged modules and text encoders are left out by --min-diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakiln.cli import main
from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import read_kohya_lora
from lorakiln.lora_tools.resize.extract import extract_lora
from lorakiln.models.family import SDXL
from lorakiln.models.loading import load_base_model
from lorakiln.models.names import kohya as keymap
from lorakiln.models.save import save_bundle_diffusers, save_bundle_single_file
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.network import find_targets

TE_Q = "encoder.layers.0.self_attn.q_proj"  # suffix: transformers ≥ 5.6 has no `text_model.` level
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # Linear 32 → 32
PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # 1×1 conv on the tiny SD1: gets --rank
CONV = "down_blocks.0.resnets.0.conv1"  # 3×3 conv: only with --conv-rank
SMALL = "up_blocks.3.attentions.0.transformer_blocks.0.attn2.to_v"  # changed by at most 0.004

KEYS = {
    TE_Q: "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    TO_Q: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    PROJ_IN: "lora_unet_down_blocks_0_attentions_0_proj_in",
    CONV: "lora_unet_down_blocks_0_resnets_0_conv1",
    SMALL: "lora_unet_up_blocks_3_attentions_0_transformer_blocks_0_attn2_to_v",
}


def _low_rank(shape: torch.Size, rank: int, seed: int, size: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    up = torch.randn(shape[0], rank, generator=gen) * size
    down = torch.randn(rank, int(torch.Size(shape[1:]).numel()), generator=gen) * size
    return (up @ down).reshape(shape)


def _module(root: torch.nn.Module, suffix: str) -> torch.nn.Module:
    return next(m for name, m in root.named_modules() if name == suffix or name.endswith("." + suffix))


def _tune(bundle, changes: dict[tuple[str, str], torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    """Add each delta to ``(part, module suffix)``'s weight in place."""
    with torch.no_grad():
        for (part, suffix), delta in changes.items():
            root = bundle.unet if part == "unet" else bundle.text_encoders[0]
            _module(root, suffix).weight.add_(delta)


@pytest.fixture(scope="module")
def sd1_deltas() -> dict[tuple[str, str], torch.Tensor]:
    """Known deltas: rank 2 on a TE q_proj, 3 on a U-Net to_q, 2 on a 1×1 proj_in and a 3×3 conv."""
    return {
        ("te", TE_Q): _low_rank(torch.Size([32, 32]), 2, 1),
        ("unet", TO_Q): _low_rank(torch.Size([32, 32]), 3, 2),
        ("unet", PROJ_IN): _low_rank(torch.Size([32, 32, 1, 1]), 2, 3),
        ("unet", CONV): _low_rank(torch.Size([32, 32, 3, 3]), 2, 4, size=0.1),
    }


@pytest.fixture(scope="module")
def sd1_tuned(tiny_sd1_file: Path, sd1_deltas, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny SD1 plus `sd1_deltas`, saved as a diffusers folder (the base is a single file)."""
    bundle = load_base_model(tiny_sd1_file)
    _tune(bundle, sd1_deltas)
    return save_bundle_diffusers(bundle, tmp_path_factory.mktemp("extract") / "tuned")


@pytest.fixture(scope="module")
def sd1_unet_only(tiny_sd1_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only U-Net changes: a rank-3 to_q, a 3×3 conv, and a tiny (≤ 0.004) change to one to_v."""
    bundle = load_base_model(tiny_sd1_file)
    small = _low_rank(torch.Size([32, 32]), 1, 5)
    _tune(bundle, {("unet", TO_Q): _low_rank(torch.Size([32, 32]), 3, 6),
                   ("unet", CONV): _low_rank(torch.Size([32, 32, 3, 3]), 2, 7),
                   ("unet", SMALL): small * (0.004 / float(small.abs().max()))})
    return save_bundle_single_file(bundle, tmp_path_factory.mktemp("extract") / "unet-only.safetensors")


def test_extract_recovers_a_known_low_rank_delta(
    tiny_sd1_file: Path, sd1_tuned: Path, sd1_deltas, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    result = extract_lora(tiny_sd1_file, sd1_tuned, tmp_path / "x.safetensors", rank=4, conv_rank=4)
    lora = read_kohya_lora(result.path)
    # exactly the changed modules, under the names a trained file uses; the rest are skipped
    assert set(lora.modules) == {KEYS[suffix] for _, suffix in sd1_deltas}
    assert result.parts == {"text_encoder": 1, "unet": 3}
    assert len(result.skipped) == 72 + 192 + 85 - 4 and all(d == 0.0 for d in result.skipped.values())
    for (_, suffix), delta in sd1_deltas.items():
        factors = lora.lora_factors(KEYS[suffix])
        assert factors.rank == 4 and factors.alpha == 4.0  # kohya: alpha = rank
        torch.testing.assert_close(factors.delta(), delta, atol=2e-6, rtol=1e-5)
    assert all(r.energy == pytest.approx(1.0, abs=1e-9) for r in result.reports)
    with safe_open(str(result.path), framework="pt") as fh:
        md = dict(fh.metadata())
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "4.0")
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4"}
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_network_module"] == "networks.lora"
    assert md["ss_sd_model_name"] == tiny_sd1_file.stem
    assert md["ss_training_comment"] == "extracted by SVD from tuned - tiny-sd1.safetensors (rank 4)"
    assert json.loads(md["lorakiln_extract"])["conv_rank"] == 4
    # applied to the base, the LoRA makes the tuned model's layer
    base, tuned = load_base_model(tiny_sd1_file), load_base_model(sd1_tuned)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = _module(tuned.text_encoders[0], TE_Q)(x)
        apply_lora_file(base, result.path)
        got = _module(base.text_encoders[0], TE_Q)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_min_diff_skips_unchanged_text_encoder_and_small_modules(
    tiny_sd1_file: Path, sd1_unet_only: Path, tmp_path: Path
) -> None:
    # no --conv-rank: the 3×3 conv is not a target, as with kohya's --conv_dim unset
    result = extract_lora(tiny_sd1_file, sd1_unet_only, tmp_path / "a.safetensors", dynamic="sv_ratio",
                          dynamic_param=1000, rank=8)
    assert set(read_kohya_lora(result.path).modules) == {KEYS[TO_Q]}
    assert [r.after for r in result.reports] == [3]  # the dynamic rule finds the true rank
    assert any("text encoder lora_te (text_encoder) is the same in both models" in n for n in result.notes)
    assert result.skipped[KEYS[SMALL]] == pytest.approx(0.004, rel=1e-3)
    assert sum(k.startswith("lora_te_") for k in result.skipped) == 72  # the whole encoder was left out
    assert any("1 of the 2 U-Net modules that changed" in n for n in result.notes)  # to_v was changed a little
    # a smaller --min-diff keeps the small change; --conv-rank adds the conv
    result = extract_lora(tiny_sd1_file, sd1_unet_only, tmp_path / "b.safetensors", rank=4, conv_rank=2,
                          min_diff=0.001)
    assert set(read_kohya_lora(result.path).modules) == {KEYS[TO_Q], KEYS[SMALL], KEYS[CONV]}
    assert not any("U-Net modules that changed" in n for n in result.notes)
    conv = load_file(str(result.path))[f"{KEYS[CONV]}.lora_down.weight"]
    assert conv.shape == (2, 32, 3, 3)


def test_sdxl_keys_land_on_te1_te2_and_sgm_unet_names(tiny_sdxl_file: Path, tmp_path: Path) -> None:
    bundle = load_base_model(tiny_sdxl_file)
    paths = {
        "te1": next(find_targets(bundle.text_encoders[0], SDXL.te_target_blocks, allow_conv=False))[0],
        "te2": next(find_targets(bundle.text_encoders[1], SDXL.te_target_blocks, allow_conv=False))[0],
        "unet": next(find_targets(bundle.unet, SDXL.unet_target_blocks, allow_conv=True))[0],
    }
    roots = {"te1": bundle.text_encoders[0], "te2": bundle.text_encoders[1], "unet": bundle.unet}
    deltas = {}
    with torch.no_grad():
        for i, (part, path) in enumerate(paths.items()):
            weight = roots[part].get_submodule(path).weight
            deltas[part] = _low_rank(weight.shape, 2, 10 + i)
            weight.add_(deltas[part])
    tuned = save_bundle_single_file(bundle, tmp_path / "tuned-xl.safetensors")
    result = extract_lora(tiny_sdxl_file, tuned, tmp_path / "xl.safetensors", rank=2)
    expected = {
        "te1": keymap.text_encoder_kohya_name(paths["te1"], 0, SDXL),
        "te2": keymap.text_encoder_kohya_name(paths["te2"], 1, SDXL),
        "unet": keymap.unet_kohya_name(paths["unet"], SDXL),
    }
    assert expected["te1"].startswith("lora_te1_text_model_encoder_layers_0_")
    assert expected["te2"].startswith("lora_te2_text_model_encoder_layers_0_")
    assert expected["unet"].startswith("lora_unet_input_blocks_4_1_")  # SGM name, as kohya writes SDXL
    lora = read_kohya_lora(result.path)
    assert lora.family is SDXL and set(lora.modules) == set(expected.values())
    for part, key in expected.items():
        torch.testing.assert_close(lora.lora_factors(key).delta(), deltas[part], atol=2e-6, rtol=1e-5)


def test_refusals(tiny_sd1_file: Path, tiny_sdxl_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    with pytest.raises(LorakilnError, match="is sd1 but --tuned .* is sdxl; extract needs two models of the same"):
        extract_lora(tiny_sd1_file, tiny_sdxl_file, out, rank=4)
    copy = save_bundle_diffusers(load_base_model(tiny_sd1_file), tmp_path / "copy")
    with pytest.raises(LorakilnError, match=r"no module of .*copy differs from .* by more than --min-diff 0.01"):
        extract_lora(tiny_sd1_file, copy, out, rank=4)
    with pytest.raises(LorakilnError, match="are the same model"):
        extract_lora(tiny_sd1_file, tiny_sd1_file, out, rank=4)
    with pytest.raises(LorakilnError, match="is the input .* never writes over its inputs"):
        extract_lora(tiny_sd1_file, copy, tiny_sd1_file, rank=4, force=True)
    with pytest.raises(LorakilnError, match="leaves nothing to extract"):
        extract_lora(tiny_sd1_file, copy, out, rank=4, text_encoder=False, unet=False)
    assert not out.exists()


def test_cli_extract(tiny_sd1_file: Path, sd1_tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.safetensors"
    argv = ["lora", "extract", "--base", str(tiny_sd1_file), "--tuned", str(sd1_tuned), str(out)]
    assert main([*argv, "--rank", "4", "--conv-rank", "4", "--save-precision", "fp16", "--verbose"]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.startswith(KEYS[TO_Q]))
    assert "rank   32 → 4" in line and "energy 100.00%" in line and "max|Δ|" in line
    assert f"{KEYS[SMALL]}" in stdout and "skipped: max|Δ| 0 ≤ --min-diff 0.01" in stdout
    assert f"wrote {out} (kohya format, sd1, 4 modules: text_encoder 1, unet 3; rank 4)" in stdout
    assert "skipped 345 module(s) whose largest |Δ| ≤ --min-diff 0.01 (345 identical in both models)" in stdout
    assert {t.dtype for t in load_file(str(out)).values()} == {torch.float16}
    for extra, message in [
        (["--rank", "4"], "exists; pass --force"),
        (["--force"], "give the new rank with --rank N"),
        (["--force", "--rank", "4", "--min-diff", "-1"], "--min-diff -1: must be 0 or more"),
    ]:
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err
    missing = ["lora", "extract", "--base", str(tmp_path / "nope.safetensors"), "--tuned", str(sd1_tuned),
               str(tmp_path / "y.safetensors"), "--rank", "4"]
    assert main(missing) == 2
    assert "nope.safetensors" in capsys.readouterr().err
