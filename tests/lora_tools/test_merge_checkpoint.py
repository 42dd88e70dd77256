"""`lora merge --model BASE`: the merged checkpoint computes what the base with the LoRAs hooked at
the same strengths computes (tiny SD 1.x with LoCon, LoHa and LoKr files, tiny SDXL with a LoRA),
as a single file and as a diffusers folder; TIES fuses what `task_merge` computes; mistakes are
errors before the base model is loaded or any weight changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lora_merge_support import outputs, save_lora
from safetensors import safe_open
from safetensors.torch import save_file

from lorakiln.cli import main
from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.merge.merge import merge
from lorakiln.lora_tools.merge.options import MergeOptions, rank_spec
from lorakiln.lora_tools.merge.task import ties
from lorakiln.models.family import SDXL
from lorakiln.models.loading import load_base_model
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.export import read_lora_file

FLOAT = MergeOptions(save_precision="float")


def _reference(base: Path, files: list[tuple[Path, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The base with the files hooked by the generator at (te, unet) strengths."""
    bundle = load_base_model(base)
    for path, te, unet in files:
        apply_lora_file(bundle, path, te=te, unet=unet)
    return outputs(bundle)


def _close(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-5)


def _module(bundle: Any, key: str) -> torch.nn.Module:
    _, path = keymap.kohya_to_diffusers_module(key, bundle.family)
    return bundle.unet.get_submodule(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt-merge-inputs")
    return {
        "locon": save_lora(d / "locon.safetensors", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, seed=1),
        "loha": save_lora(d / "loha.safetensors", algo="loha", dim=2, alpha=1.0, seed=3),
        "lokr": save_lora(d / "lokr.safetensors", algo="lokr", dim=2, alpha=1.0, lokr_factor=4, seed=5),
        "xl": save_lora(d / "xl.safetensors", SDXL, dim=2, alpha=1.0, seed=6),
    }


def test_locon_and_lokr_fused_into_an_sd1_single_file_equal_the_hooked_base(
    files: dict[str, Path], tiny_sd1_file: Path, tmp_path: Path
) -> None:
    specs = [f"{files['locon']}:0.7:0.4", f"{files['lokr']}:-0.5"]
    result = merge(specs, tmp_path / "merged.safetensors", model=tiny_sd1_file, options=FLOAT)
    assert result.kind == "checkpoint" and result.method == "sum" and result.modules > 300
    expected = _reference(tiny_sd1_file, [(files["locon"], 0.7, 0.4), (files["lokr"], -0.5, -0.5)])
    _close(outputs(load_base_model(result.path)), expected)
    base = outputs(load_base_model(tiny_sd1_file))
    assert not torch.allclose(base[0], expected[0], atol=1e-3) and not torch.allclose(base[1], expected[1], atol=1e-3)
    with safe_open(str(result.path), framework="pt") as fh:
        record = json.loads(fh.metadata()["lorakiln_merge"])
    assert record["base"] == "tiny-sd1" and record["save_precision"] == "float"
    assert [(r["file"], r["te"], r["unet"]) for r in record["loras"]] == [("locon.safetensors", 0.7, 0.4),
                                                                          ("lokr.safetensors", -0.5, -0.5)]


def test_loha_into_a_diffusers_folder_loads_and_equals_the_hooked_base(
    files: dict[str, Path], tiny_sd1_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged-folder"
    result = merge([f"{files['loha']}:0.6"], out, model=tiny_sd1_dir, options=FLOAT)
    assert result.kind == "diffusers" and (out / "model_index.json").is_file()
    assert json.loads((out / "lorakiln_merge.json").read_text())["loras"][0]["te"] == 0.6
    _close(outputs(load_base_model(out)), _reference(tiny_sd1_dir, [(files["loha"], 0.6, 0.6)]))


def test_lora_fused_into_a_tiny_sdxl_single_file(files: dict[str, Path], tiny_sdxl_file: Path, tmp_path: Path) -> None:
    result = merge([f"{files['xl']}:0.9:1.3"], tmp_path / "xl-merged.safetensors", model=tiny_sdxl_file,
                   options=FLOAT)
    assert result.family == "sdxl"
    tensors, _ = read_lora_file(files["xl"])
    assert any(k.startswith("lora_te2_") for k in tensors)  # both text encoders and the U-Net are patched
    _close(outputs(load_base_model(result.path)), _reference(tiny_sdxl_file, [(files["xl"], 0.9, 1.3)]))


def test_ties_into_a_checkpoint_and_default_fp16(files: dict[str, Path], tiny_sd1_file: Path, tmp_path: Path) -> None:
    options = MergeOptions(method="ties", density=0.4, save_precision="float")
    out = merge([f"{files['locon']}:1", f"{files['lokr']}:0.5"], tmp_path / "ties.safetensors", model=tiny_sd1_file,
                options=options).path
    merged, base = load_base_model(out), load_base_model(tiny_sd1_file)
    probe = load_base_model(tiny_sd1_file)
    hooks = [apply_lora_file(probe, files["locon"]), apply_lora_file(probe, files["lokr"])]
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    deltas = [hooks[0].modules[key].delta_weight().detach(), 0.5 * hooks[1].modules[key].delta_weight().detach()]
    change = _module(merged, key).weight - _module(base, key).weight
    torch.testing.assert_close(change, ties(deltas, 0.4), rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(change) < change.numel()  # trimmed and disagreeing entries stay at the base
    half = merge([files["locon"]], tmp_path / "half.safetensors", model=tiny_sd1_file).path
    with safe_open(str(half), framework="pt") as fh:
        assert fh.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16  # default fp16


def test_dora_is_fused_with_the_base_and_needs_it_for_a_lora(tiny_sd1_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("lorakiln.networks.dora")
    dora = save_lora(tmp_path / "dora.safetensors", dim=2, alpha=1.0, dora_wd=True, seed=7)
    expected = _reference(tiny_sd1_file, [(dora, 0.6, 0.6)])
    merged = merge([f"{dora}:0.6"], tmp_path / "m.safetensors", model=tiny_sd1_file, options=FLOAT).path
    _close(outputs(load_base_model(merged)), expected)
    with pytest.raises(LorakilnError, match="is a DoRA module; .*--model BASE for DoRA"):
        merge([dora], tmp_path / "x.safetensors")
    full = MergeOptions(ranks=rank_spec(10_000, None, None, None), save_precision="float")
    with pytest.raises(LorakilnError, match=r"DoRA module \(dora_scale\).*pass --model BASE"):
        merge([dora], tmp_path / "x.safetensors", options=full)
    as_lora = merge([f"{dora}:0.6"], tmp_path / "d.safetensors", model=tiny_sd1_file, to="lora", options=full).path
    bundle = load_base_model(tiny_sd1_file)
    apply_lora_file(bundle, as_lora)
    _close(outputs(bundle), expected)  # W' − W at full rank: the DoRA change on this base, as a plain LoRA


def test_mistakes_are_errors_before_the_base_is_loaded(files: dict[str, Path], tiny_sd1_file: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lorakiln.models.loading as loading

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(loading, "load_base_model", refuse)
    out = tmp_path / "m.safetensors"
    with pytest.raises(LorakilnError, match=r"xl.safetensors is a LoRA for sdxl, but the base model tiny-sd1"):
        merge([files["xl"]], out, model=tiny_sd1_file)
    bad = tmp_path / "bad.safetensors"
    save_file({"lora_te_foo_bar.lora_down.weight": torch.ones(2, 4), "lora_te_foo_bar.lora_up.weight": torch.ones(4, 2)},
              str(bad), {"ss_base_model_version": "sd_v1"})
    with pytest.raises(LorakilnError, match=r"bad.safetensors: 'lora_te_foo_bar' is not a module key of sd1"):
        merge([bad], out, model=tiny_sd1_file)
    with pytest.raises(LorakilnError, match="shape a LoRA output"):
        merge([files["locon"]], out, model=tiny_sd1_file,
              options=MergeOptions(ranks=rank_spec(4, None, None, None)))
    with pytest.raises(LorakilnError, match="is the input .*tiny-sd1.safetensors"):
        merge([files["locon"]], tiny_sd1_file, model=tiny_sd1_file, options=MergeOptions(force=True))
    with pytest.raises(LorakilnError, match="pickled checkpoints"):
        merge([files["locon"]], tmp_path / "m.ckpt", model=tiny_sd1_file)
    out.write_bytes(b"x")
    with pytest.raises(LorakilnError, match="exists; pass --force"):
        merge([files["locon"]], out, model=tiny_sd1_file)
    assert out.read_bytes() == b"x"


def test_a_key_without_a_module_fails_before_any_weight_changes(tiny_sd1_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "ghost.safetensors"
    key = "lora_unet_down_blocks_9_attentions_0_proj_in"
    save_file({f"{key}.lora_down.weight": torch.ones(2, 4), f"{key}.lora_up.weight": torch.ones(4, 2)},
              str(bad), {"ss_base_model_version": "sd_v1"})
    with pytest.raises(LorakilnError, match="names no module of this sd1 model"):
        merge([bad], tmp_path / "m.safetensors", model=tiny_sd1_file)
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_merge_into_checkpoint(files: dict[str, Path], tiny_sd1_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.safetensors"
    assert main(["lora", "merge", "--model", str(tiny_sd1_file), "--lora", f"{files['locon']}:0.5", str(out)]) == 0
    report = capsys.readouterr().out
    assert "single-file checkpoint, sd1" in report and "weights changed" in report and "locon.safetensors:0.5" in report
    assert main(["lora", "merge", "--model", str(tiny_sd1_file), "--lora", f"{files['xl']}", str(tmp_path / "x")]) == 2
    assert "is a LoRA for sdxl" in capsys.readouterr().err
