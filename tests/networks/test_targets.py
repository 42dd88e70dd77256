"""`network.target_modules` presets and include/exclude patterns on the tiny SD1 and SDXL models.

The expected sets are computed here from the models' own classes (diffusers `Attention` and
`FeedForward`, transformers' CLIP attention/MLP), not from the rule under test, so a wrong role
pattern shows up as a count or set mismatch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.models.family import SD1, SDXL
from lorakiln.models.tiny import build_tiny_sd1
from lorakiln.models.tiny_sdxl import build_tiny_sdxl
from lorakiln.networks.adapters import locon_conv_targets
from lorakiln.networks.network import create_lora_network
from lorakiln.networks.targets import TargetRule, layer_role, preset_of


def _paths_under(model: nn.Module, class_names: tuple[str, ...], children: tuple[str, ...]) -> set[str]:
    out = set()
    for name, module in model.named_modules():
        if type(module).__name__ in class_names:
            out |= {f"{name}.{c}" for c in children}
    return out


def _expected(unet: nn.Module, encoders: list[nn.Module], preset: str) -> dict[str, set[str]]:
    """Module paths per part for `preset`, from the models' classes."""
    attn = _paths_under(unet, ("Attention",), ("to_q", "to_k", "to_v", "to_out.0"))
    mlp = _paths_under(unet, ("FeedForward",), ("net.0.proj", "net.2"))
    proj = _paths_under(unet, ("Transformer2DModel",), ("proj_in", "proj_out"))
    convs = {path for path, _ in locon_conv_targets(unet)}
    unet_sets = {"attn": attn, "attn-mlp": attn | mlp, "kohya": attn | mlp | proj,
                 "full": attn | mlp | proj | convs}
    parts = {"unet": unet_sets[preset]}
    for index, encoder in enumerate(encoders):
        te_attn = _paths_under(encoder, ("CLIPAttention", "CLIPSdpaAttention"), ("q_proj", "k_proj", "v_proj", "out_proj"))
        te_mlp = _paths_under(encoder, ("CLIPMLP",), ("fc1", "fc2"))
        parts[("text_encoder", "text_encoder_2")[index]] = te_attn if preset == "attn" else te_attn | te_mlp
    return parts


def _built(network) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, _ in network.loras():
        out.setdefault(network.parts[key], set()).add(network.module_paths[key])
    return out


@pytest.mark.parametrize("preset", ["attn", "attn-mlp", "kohya", "full"])
def test_each_preset_adapts_exactly_its_layers_on_sd1(tmp_path: Path, preset: str) -> None:
    parts = build_tiny_sd1(tmp_path / "tok", seed=0)
    net = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4,
                              targets=TargetRule(preset))
    assert _built(net) == _expected(parts.unet, [parts.text_encoder], preset)
    counts = {"attn": (128, 48), "attn-mlp": (160, 72), "kohya": (192, 72)}  # SD 1.5's own counts
    if preset in counts:
        assert (net.counts()["unet"], net.counts()["text_encoder"]) == counts[preset]
    else:
        assert net.counts()["unet"] == 277  # + 22 ResNets × conv1/conv2/time_emb_proj, 13 shortcuts, 6 samplers
        assert net.network_args["conv_dim"] == "4"  # full: conv_dim defaults to network_dim (LyCORIS)
    assert preset_of(net.module_paths.values()) == preset
    assert preset_of(net.keys()) == preset  # the same rule reads kohya keys (lora info, dry run)


@pytest.mark.parametrize("preset", ["attn", "attn-mlp", "kohya", "full"])
def test_each_preset_adapts_exactly_its_layers_on_sdxl(preset: str) -> None:
    parts = build_tiny_sdxl(None, seed=0)
    encoders = list(parts.text_encoders)
    net = create_lora_network(parts.unet, encoders, SDXL, dim=4, alpha=4, targets=TargetRule(preset))
    assert _built(net) == _expected(parts.unet, encoders, preset)
    assert preset_of(net.keys()) == preset  # SGM key names (lora_unet_input_blocks_…)


def test_default_is_kohyas_set_unchanged(tmp_path: Path) -> None:
    parts = build_tiny_sd1(tmp_path / "tok", seed=0)
    default = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4)
    keys = list(default.keys())
    default.remove()
    explicit = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4,
                                   targets=TargetRule("kohya"))
    assert list(explicit.keys()) == keys and len(keys) == 264


def test_include_and_exclude_narrow_the_preset(tmp_path: Path) -> None:
    parts = build_tiny_sd1(tmp_path / "tok", seed=0)
    rule = TargetRule("attn", include=(r"attn2", r"self_attn"), exclude=(r"^unet\.mid_block",))
    net = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4, targets=rule)
    paths = {f"{net.parts[k]}.{net.module_paths[k]}" for k in net}
    assert all(".attn2." in p or ".self_attn." in p for p in paths)
    assert not any(p.startswith("unet.mid_block") for p in paths)
    assert net.counts() == {"unet": 60, "text_encoder": 48}  # 15 of 16 transformers' attn2 × 4
    # kohya names work as well as diffusers paths
    net.remove()
    by_key = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4,
                                 targets=TargetRule("attn", include=(r"^lora_unet_.*_attn2_to_[kv]$",)))
    assert by_key.counts() == {"unet": 32}


@pytest.mark.parametrize(("rule", "message"), [
    (TargetRule("attn", include=("attn3",)), r"target_include pattern 'attn3' matches none of the 176 layers"),
    (TargetRule("kohya", exclude=("resnets",)), r"target_exclude pattern 'resnets' matches none"),
    (TargetRule("attn", exclude=(r"self_attn\.q_proj",)), r"only part of q/k/v/out_proj in 12 text-encoder"),
    (TargetRule("attn", exclude=(".",)), r"leave no layer of preset 'attn'"),
])
def test_bad_patterns_are_clear_errors(tmp_path: Path, rule: TargetRule, message: str) -> None:
    parts = build_tiny_sd1(tmp_path / "tok", seed=0)
    with pytest.raises(LorakilnError, match=message):
        create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=4, alpha=4, targets=rule)


def test_layer_roles_from_names() -> None:
    assert layer_role("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0") == "attn"
    assert layer_role("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "attn"
    assert layer_role("lora_te2_text_model_encoder_layers_0_self_attn_out_proj") == "attn"
    assert layer_role("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj") == "mlp"
    assert layer_role("text_model.encoder.layers.3.mlp.fc2") == "mlp"
    assert layer_role("lora_unet_mid_block_attentions_0_proj_in") == "proj"
    assert layer_role("down_blocks.0.resnets.1.time_emb_proj") == "conv"
    assert layer_role("lora_unet_input_blocks_1_0_in_layers_2") == "conv"
    assert layer_role("conv_in") == "other" and preset_of(["conv_in"]) == "custom"
    with pytest.raises(ValueError, match="choose one of attn, attn-mlp, kohya, full"):
        TargetRule("attn-only")


def test_attn_file_loads_in_diffusers_and_fuses_exactly(tiny_sd1_dir: Path, tmp_path: Path) -> None:
    """The files of a preset are plain kohya files: diffusers loads every module and the fused
    change of each layer is the module's ΔW."""
    from diffusers import StableDiffusionPipeline

    from lorakiln.networks.export import save_kohya_lora
    from lorakiln.networks.metadata import TrainingInfo, build_metadata

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    net = create_lora_network(pipe.unet, [pipe.text_encoder], SD1, dim=8, alpha=4,
                              targets=TargetRule("attn", exclude=(r"down_blocks\.0",)))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, module in net.loras():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=gen) * 0.5)
    net.remove()
    deltas = {(net.parts[k], net.module_paths[k]): m.delta_weight() for k, m in net.loras()}
    path = save_kohya_lora(net, tmp_path / "attn.safetensors", build_metadata(TrainingInfo(output_name="a"), net),
                           dtype="float")

    def weight(part: str, module_path: str) -> torch.Tensor:
        module = (pipe.unet if part == "unet" else pipe.text_encoder).get_submodule(module_path)
        return getattr(module, "base_layer", module).weight.detach().clone()

    before = {key: weight(*key) for key in deltas}
    pipe.load_lora_weights(str(path), adapter_name="attn")
    pipe.fuse_lora(lora_scale=1.0)
    for key, delta in deltas.items():
        torch.testing.assert_close(weight(*key) - before[key], delta, rtol=1e-5,
                                   atol=1e-5 * delta.abs().max().item(), msg=str(key))
    untouched = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert ("unet", untouched) not in deltas
    assert re.search("attn", str(sorted(deltas)[0]))
