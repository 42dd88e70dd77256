"""`lorakiln lora convert`: kohya ⇄ diffusers/PEFT keeps every module's ΔW = scale·up@down, the
diffusers result loads cleanly in diffusers, and lorakiln's own generation path reads a kohya file
converted from diffusers with the same deltas."""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools import command
from lorakiln.lora_tools.files.convert import convert_lora
from lorakiln.lora_tools.files.info import inspect_lora
from lorakiln.models.family import SD1, SDXL, ModelFamily
from lorakiln.models.names import kohya as keymap
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.export import addnet_model_hash, save_diffusers_lora, save_kohya_lora
from lorakiln.networks.lora import delta_weight
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import LoRANetwork, create_lora_network


def _randomize(net: LoRANetwork, seed: int) -> LoRANetwork:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.1)
    net.remove()
    return net


def _network(family: ModelFamily, dim: int, alpha: float, seed: int = 0) -> LoRANetwork:
    bundle = (build_tiny_sd1_bundle if family is SD1 else build_tiny_sdxl_bundle)(seed=0)
    return _randomize(
        create_lora_network(bundle.unet, bundle.text_encoders, family, dim=dim, alpha=alpha), seed
    )


def _kohya_deltas(path: Path) -> dict[str, torch.Tensor]:
    """ΔW = (alpha/rank)·up@down per module of a kohya file, flattened (kohya's scale)."""
    tensors = load_file(str(path))
    out = {}
    for key in {k.split(".")[0] for k in tensors}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        out[key] = delta_weight(up, down, float(tensors[f"{key}.alpha"]) / down.shape[0], (-1,))
    return out


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def sd1_net() -> LoRANetwork:
    """dim 8 / alpha 4: scale 0.5, so a converter that ignored alpha would be off by 2×."""
    return _network(SD1, dim=8, alpha=4)


@pytest.fixture(scope="module")
def sdxl_net() -> LoRANetwork:
    return _network(SDXL, dim=4, alpha=2, seed=1)


def test_kohya_diffusers_kohya_round_trip_sd1(sd1_net: LoRANetwork, tmp_path: Path) -> None:
    md = build_metadata(TrainingInfo(output_name="zwx"), sd1_net)
    original = save_kohya_lora(sd1_net, tmp_path / "zwx.safetensors", md, dtype="float")
    diffusers = convert_lora(original, tmp_path / "zwx_diffusers.safetensors", "diffusers").path
    # alpha folded into lora_B exactly as the trainer's own diffusers export does
    _assert_same_tensors(
        load_file(str(diffusers)), load_file(str(save_diffusers_lora(sd1_net, tmp_path / "ref")))
    )
    assert _metadata(diffusers) == {"format": "pt"}
    back = convert_lora(diffusers, tmp_path / "back.safetensors", "kohya").path
    before, after = _kohya_deltas(original), _kohya_deltas(back)
    assert before.keys() == after.keys() and len(before) == 264
    for key in before:  # alpha/rank = 0.5 is a power of two: bit-identical deltas
        assert torch.equal(before[key], after[key]), key
    tensors = load_file(str(back))
    assert all(float(v) == 8.0 for k, v in tensors.items() if k.endswith(".alpha"))
    back_md = _metadata(back)
    assert back_md["ss_base_model_version"] == "sd_v1" and back_md["ss_network_module"] == "networks.lora"
    assert (back_md["ss_network_dim"], back_md["ss_network_alpha"]) == ("8", "8.0")
    assert back_md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert back_md["sshs_model_hash"] == addnet_model_hash(back.read_bytes())


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "float"])
def test_alpha_equal_to_rank_round_trips_bit_for_bit(tmp_path: Path, dtype: str) -> None:
    net = _network(SD1, dim=4, alpha=4, seed=2)
    original = save_kohya_lora(
        net, tmp_path / "a.safetensors", build_metadata(TrainingInfo("a"), net), dtype=dtype
    )
    diffusers = convert_lora(original, tmp_path / "d", "diffusers").path
    assert diffusers.name == "pytorch_lora_weights.safetensors"
    back = convert_lora(diffusers, tmp_path / "b.safetensors", "kohya").path
    _assert_same_tensors(load_file(str(original)), load_file(str(back)))


def test_other_scales_keep_the_delta(tmp_path: Path) -> None:
    net = _network(SD1, dim=8, alpha=3, seed=3)
    original = save_kohya_lora(net, tmp_path / "a.safetensors", dtype="float")
    back = convert_lora(convert_lora(original, tmp_path / "d.safetensors", "diffusers").path,
                        tmp_path / "b.safetensors", "kohya").path  # fmt: skip
    before, after = _kohya_deltas(original), _kohya_deltas(back)
    for key in before:
        # one float32 rounding of up·alpha/rank: within float eps of the delta's scale
        torch.testing.assert_close(
            after[key], before[key], rtol=1e-6, atol=1e-6 * before[key].abs().max().item()
        )


def test_kohya_diffusers_kohya_round_trip_sdxl(sdxl_net: LoRANetwork, tmp_path: Path) -> None:
    original = save_kohya_lora(sdxl_net, tmp_path / "xl.safetensors", dtype="float")
    diffusers = convert_lora(original, tmp_path / "xl_d.safetensors", "diffusers").path
    _assert_same_tensors(
        load_file(str(diffusers)), load_file(str(save_diffusers_lora(sdxl_net, tmp_path / "ref")))
    )
    keys = load_file(str(diffusers)).keys()
    assert any(k.startswith("text_encoder_2.text_model.") for k in keys)
    assert any(k.startswith("unet.up_blocks.0.attentions.") for k in keys)
    back = convert_lora(diffusers, tmp_path / "xl_b.safetensors", "kohya").path
    assert any(
        k.startswith("lora_unet_input_blocks_4_1_") for k in load_file(str(back))
    )  # SGM names, as kohya
    before, after = _kohya_deltas(original), _kohya_deltas(back)
    assert before.keys() == after.keys() and len(before) == 722 + 72 + 192
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _metadata(back)["ss_base_model_version"] == "sdxl_base_v1-0"


def test_converted_diffusers_file_loads_cleanly_in_diffusers(
    tiny_sd1_dir: Path, library_warnings: list, tmp_path: Path
) -> None:
    """diffusers as a real client: no missing/unexpected-key warnings, every module injected, fused ΔW right."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd1_dir, safety_checker=None, requires_safety_checker=False
    )
    net = _randomize(create_lora_network(pipe.unet, [pipe.text_encoder], SD1, dim=8, alpha=4), seed=4)
    deltas = {(net.parts[k], net.module_paths[k]): m.delta_weight() for k, m in net.loras()}
    kohya = save_kohya_lora(
        net, tmp_path / "k.safetensors", build_metadata(TrainingInfo("k"), net), dtype="float"
    )
    converted = convert_lora(kohya, tmp_path / "d.safetensors", "diffusers").path

    def weight(part: str, path: str) -> torch.Tensor:
        module = (pipe.unet if part == "unet" else pipe.text_encoder).get_submodule(path)
        return getattr(module, "base_layer", module).weight.detach().clone()

    before = {key: weight(*key) for key in deltas}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(converted), adapter_name="converted")
        messages = [r.getMessage() for r in library_warnings]
        messages += [str(w.message) for w in caught if re.search(r"key|lora|adapter", str(w.message), re.I)]
        assert not messages, messages
        assert sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()) == 192
        assert sum(isinstance(m, LoraLayer) for m in pipe.text_encoder.modules()) == 72
        pipe.fuse_lora(lora_scale=1.0)
        for key, delta in deltas.items():
            torch.testing.assert_close(weight(*key) - before[key], delta, rtol=1e-5,
                                       atol=1e-5 * delta.abs().max().item(), msg=str(key))  # fmt: skip
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()


def test_kohya_from_diffusers_applies_with_the_same_deltas(sd1_net: LoRANetwork, tmp_path: Path) -> None:
    diffusers = save_diffusers_lora(sd1_net, tmp_path / "d.safetensors")
    kohya = convert_lora(diffusers, tmp_path / "k.safetensors", "kohya").path
    bundle = build_tiny_sd1_bundle(seed=0)
    applied = apply_lora_file(bundle, kohya)
    try:
        assert applied.modules.keys() == dict(sd1_net.loras()).keys()
        for key, module in sd1_net.loras():
            torch.testing.assert_close(applied.modules[key].delta_weight(), module.delta_weight(), rtol=1e-6,
                                       atol=1e-9, msg=key)  # fmt: skip
    finally:
        applied.remove()


def test_off_style_kohya_names_convert_to_the_same_diffusers_file(
    sd1_net: LoRANetwork, sdxl_net: LoRANetwork, tmp_path: Path
) -> None:
    """SD1 keys with LDM U-Net names (A1111/ComfyUI accept them) and SDXL keys with diffusers U-Net
    names (diffusers' advanced SDXL script) map to the same modules as the canonical names."""
    levels = keymap.UP_ATTENTION_LEVELS
    for net, family, rename in (
        (sd1_net, SD1, lambda path: keymap.diffusers_to_ldm_path(path, levels["sd1"])),
        (sdxl_net, SDXL, lambda path: path),
    ):
        canonical = save_kohya_lora(net, tmp_path / f"{family.name}.safetensors", dtype="float")
        renamed = {}
        for key, value in load_file(str(canonical)).items():
            module, _, param = key.partition(".")
            if module.startswith("lora_unet_"):
                _, path = keymap.kohya_to_diffusers_module(module, family)
                module = "lora_unet_" + rename(path).replace(".", "_")
            renamed[f"{module}.{param}"] = value
        assert renamed.keys() != load_file(str(canonical)).keys()
        off = tmp_path / f"{family.name}_off.safetensors"
        save_file(renamed, str(off), {"ss_base_model_version": family.base_model_version})
        a = convert_lora(canonical, tmp_path / f"{family.name}_a.safetensors", "diffusers").path
        b = convert_lora(off, tmp_path / f"{family.name}_b.safetensors", "diffusers").path
        _assert_same_tensors(load_file(str(a)), load_file(str(b)))


def test_old_diffusers_naming_converts_like_peft(sd1_net: LoRANetwork, tmp_path: Path) -> None:
    peft = save_diffusers_lora(sd1_net, tmp_path / "peft.safetensors")
    old = {}
    for key, value in load_file(str(peft)).items():
        role = "down" if ".lora_A." in key else "up"
        module = key.split(".lora_")[0]
        if module.endswith(".to_out.0"):
            old[f"{module[: -len('.to_out.0')]}.processor.to_out_lora.{role}.weight"] = value
        elif re.search(r"attn\d\.to_[qkv]$", module):
            parent, proj = module.rsplit(".", 1)
            old[f"{parent}.processor.{proj}_lora.{role}.weight"] = value
        elif module.startswith("text_encoder."):
            old[f"{module}.lora_linear_layer.{role}.weight"] = value
        else:
            old[f"{module}.lora.{role}.weight"] = value
    old_path = tmp_path / "old.safetensors"
    save_file(old, str(old_path))
    a = convert_lora(peft, tmp_path / "a.safetensors", "kohya").path
    b = convert_lora(old_path, tmp_path / "b.safetensors", "kohya").path
    _assert_same_tensors(load_file(str(a)), load_file(str(b)))


def test_diffusers_adapter_metadata_scale_is_folded_into_lora_up(tmp_path: Path) -> None:
    """A diffusers file whose `lora_adapter_metadata` sets lora_alpha ≠ r (diffusers applies
    alpha/r) converts to kohya with the same ΔW; `alpha_pattern` overrides per module."""
    net = _network(SD1, dim=8, alpha=8, seed=5)
    tensors = load_file(str(save_diffusers_lora(net, tmp_path / "plain.safetensors")))
    config = {"unet.r": 8, "unet.lora_alpha": 2, "unet.alpha_pattern": {"proj_in": 8},
              "text_encoder.r": 8, "text_encoder.lora_alpha": 4}  # fmt: skip
    path = tmp_path / "meta.safetensors"
    save_file(tensors, str(path), {"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    deltas = _kohya_deltas(convert_lora(path, tmp_path / "k.safetensors", "kohya").path)
    for key, module in net.loras():
        scale = 0.5 if net.parts[key] == "text_encoder" else 1.0 if key.endswith("proj_in") else 0.25
        torch.testing.assert_close(deltas[key], module.delta_weight().flatten() * scale, rtol=1e-6, atol=1e-9)


def test_ss_metadata_is_kept_going_to_kohya(sd1_net: LoRANetwork, tmp_path: Path) -> None:
    tensors = load_file(str(save_diffusers_lora(sd1_net, tmp_path / "d0.safetensors")))
    path = tmp_path / "d.safetensors"
    save_file(tensors, str(path), {"format": "pt", "ss_output_name": "zwx", "ss_network_alpha": "4.0",
                                   "ss_tag_frequency": '{"10_zwx": {"zwx": 10}}'})  # fmt: skip
    md = _metadata(convert_lora(path, tmp_path / "k.safetensors", "kohya").path)
    assert md["ss_output_name"] == "zwx" and md["ss_tag_frequency"] == '{"10_zwx": {"zwx": 10}}'
    assert md["ss_network_alpha"] == "8.0"  # describes the written tensors (alpha = rank)
    assert "format" not in md


def test_refusals(sd1_net: LoRANetwork, tmp_path: Path) -> None:
    kohya = save_kohya_lora(sd1_net, tmp_path / "k.safetensors", dtype="float")
    diffusers = save_diffusers_lora(sd1_net, tmp_path / "d.safetensors")
    with pytest.raises(LorakilnError, match="already a kohya-style LoRA"):
        convert_lora(kohya, tmp_path / "x.safetensors", "kohya")
    with pytest.raises(LorakilnError, match="already a diffusers LoRA"):
        convert_lora(diffusers, tmp_path / "x.safetensors", "diffusers")
    with pytest.raises(LorakilnError, match="must end in .safetensors"):
        convert_lora(diffusers, tmp_path / "k_out", "kohya")
    with pytest.raises(LorakilnError, match="is a sd1 LoRA .* not sdxl"):
        convert_lora(kohya, tmp_path / "x.safetensors", "diffusers", family="sdxl")
    # an existing output is kept unless --force
    target = tmp_path / "exists.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(LorakilnError, match="exists; pass --force"):
        convert_lora(kohya, target, "diffusers")
    assert target.read_bytes() == b"keep me"
    convert_lora(kohya, target, "diffusers", force=True)
    assert load_file(str(target)).keys() == load_file(str(diffusers)).keys()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_refuses_what_a_plain_lora_cannot_hold(tmp_path: Path) -> None:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    loha = {f"{key}.hada_w1_a": torch.zeros(32, 4), f"{key}.hada_w1_b": torch.zeros(4, 32),
            f"{key}.hada_w2_a": torch.zeros(32, 4), f"{key}.hada_w2_b": torch.zeros(4, 32),
            f"{key}.alpha": torch.tensor(4.0)}  # fmt: skip
    dora = {f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4),
            f"{key}.dora_scale": torch.ones(32, 1)}  # fmt: skip
    for name, tensors, what in (("loha", loha, "LoHa"), ("dora", dora, "DoRA")):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(LorakilnError, match=what):
            convert_lora(path, tmp_path / f"{name}_d.safetensors", "diffusers")


def test_unknown_family_needs_the_flag(tmp_path: Path) -> None:
    """A mid-block-only U-Net file exists in SD1 and SDXL alike: --family decides."""
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "mid.safetensors"
    save_file({f"{key}.lora_down.weight": torch.ones(2, 8), f"{key}.lora_up.weight": torch.ones(8, 2),
               f"{key}.alpha": torch.tensor(1.0)}, str(path))  # fmt: skip
    with pytest.raises(LorakilnError, match="pass --family sd1 or --family sdxl"):
        convert_lora(path, tmp_path / "d.safetensors", "diffusers")
    out = convert_lora(path, tmp_path / "d.safetensors", "diffusers", family="sd1").path
    tensors = load_file(str(out))
    assert set(tensors) == {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"}  # fmt: skip
    assert torch.equal(tensors[next(k for k in tensors if "lora_B" in k)], torch.full((8, 2), 0.5))


def test_command_convert(sd1_net: LoRANetwork, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="lorakiln lora")
    command.add_arguments(parser.add_subparsers(dest="lora_verb", required=True))
    kohya = save_kohya_lora(sd1_net, tmp_path / "k.safetensors", dtype="float")
    args = parser.parse_args(["convert", str(kohya), str(tmp_path / "out"), "--to", "diffusers"])
    assert command.run(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "pytorch_lora_weights.safetensors" in out and "load_lora_weights" in out
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    # a diffusers folder is accepted as input, as `load_lora_weights` accepts it
    assert inspect_lora(tmp_path / "out").format == "diffusers"
    back = convert_lora(tmp_path / "out", tmp_path / "back.safetensors", "kohya").path
    assert _kohya_deltas(back).keys() == _kohya_deltas(kohya).keys()
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", str(kohya), "x", "--to", "lycoris"])
