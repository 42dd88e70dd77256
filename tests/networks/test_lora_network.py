"""LoRANetwork: targets and counts, whole-model hook == fused, groups, resume from a file."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from networks_support import ALPHA, DIM, randomize_up

from lorakiln.errors import LorakilnError
from lorakiln.models.family import SD1
from lorakiln.models.names import kohya as keymap
from lorakiln.models.tiny import TinyComponents
from lorakiln.networks.network import LoRANetwork, create_lora_network

UNET_SUFFIXES = {
    "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2",
    *(f"attn{a}_to_{p}" for a in (1, 2) for p in ("q", "k", "v", "out_0")),
}  # fmt: skip


def _unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 16, 16, generator=gen), torch.tensor([10]), torch.randn(1, 5, 32, generator=gen)


def _fused_copy(model: torch.nn.Module, network: LoRANetwork, part: str) -> torch.nn.Module:
    """A copy of `model` whose target weights have ΔW added — the 'merged' reference."""
    network.remove()  # deepcopy would otherwise copy the hooks (and the LoRA modules) too
    fused = copy.deepcopy(model)
    network.attach()
    with torch.no_grad():
        for key, lora in network.loras(part):
            fused.get_submodule(network.module_paths[key]).weight += lora.delta_weight()
    return fused


def test_counts_and_targets(network: LoRANetwork) -> None:
    assert network.counts() == {"unet": 192, "text_encoder": 72}
    assert len(network) == 264
    for key in network:
        if key.startswith("lora_unet_"):
            assert any(key.endswith("_" + s) for s in UNET_SUFFIXES), key
            assert network.module_paths[key].split(".")[0] in {"down_blocks", "mid_block", "up_blocks"}
        else:
            # classic `text_model` level kept although transformers 5.6 drops it
            assert re.fullmatch(
                r"lora_te_text_model_encoder_layers_\d+_(self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc[12])",
                key,
            ), key
    proj_in = network["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert proj_in.lora_down.weight.dim() == 4  # SD1 proj_in is a 1×1 conv


def test_state_dict_is_the_kohya_key_set(network: LoRANetwork) -> None:
    keys = set(network.state_dict())
    assert keys == {f"{k}.{s}" for k in network for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert all(t.dtype == torch.float32 for t in network.state_dict().values())


def test_unet_forward_with_hooks_equals_fused_weights(tiny_sd1: TinyComponents, network: LoRANetwork) -> None:
    unet = tiny_sd1.unet
    sample, t, ctx = _unet_inputs()
    fused = _fused_copy(unet, network, "unet")
    network.remove()
    with torch.no_grad():
        base = unet(sample, t, ctx).sample
        network.attach()
        hooked = unet(sample, t, ctx).sample
        expected = fused(sample, t, ctx).sample
        assert not torch.allclose(hooked, base)
        torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-4)
        network.set_multiplier(0.0)
        assert torch.equal(unet(sample, t, ctx).sample, base)
        network.set_multiplier(1.0)
        network.remove()
        assert torch.equal(unet(sample, t, ctx).sample, base)


def test_text_encoder_forward_with_hooks_equals_fused_weights(
    tiny_sd1: TinyComponents, network: LoRANetwork
) -> None:
    te = tiny_sd1.text_encoder
    ids = torch.tensor([[49406 % te.config.vocab_size, 5, 7, 9, 11]])
    fused = _fused_copy(te, network, "text_encoder")
    with torch.no_grad():
        hooked = te(ids).last_hidden_state
        expected = fused(ids).last_hidden_state
        torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-4)
        network.set_multiplier(0.0, part="text_encoder")
        assert network["lora_unet_mid_block_attentions_0_proj_in"].multiplier == 1.0
        network.remove()
        base = te(ids).last_hidden_state
        network.attach()
        assert torch.equal(te(ids).last_hidden_state, base)


def test_param_groups(tiny_sd1: TinyComponents) -> None:
    net = create_lora_network(tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=4, alpha=None)
    groups = net.param_groups(unet_lr=1e-4, text_encoder_lr=None, default_lr=5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("text_encoder", 5e-5)]
    assert sum(len(g["params"]) for g in groups) == 2 * len(net)
    assert net.alpha == 4.0  # alpha None ⇒ rank
    net.remove()
    unet_only = create_lora_network(
        tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=4, alpha=1, train_text_encoder=False
    )
    assert unet_only.counts() == {"unet": 192}
    assert [g["name"] for g in unet_only.param_groups(None, 1e-5, 1e-4)] == ["unet"]
    te_only = create_lora_network(
        tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=4, alpha=1, train_unet=False
    )
    assert te_only.counts() == {"text_encoder": 72}


def test_load_kohya_state_dict_roundtrip(tiny_sd1: TinyComponents, network: LoRANetwork) -> None:
    sd = {k: v.clone() for k, v in network.state_dict().items()}
    other = create_lora_network(tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=DIM, alpha=1.0)
    other.load_kohya_state_dict({k: v.half() for k, v in sd.items()})
    for key, lora in other.loras():
        assert lora.scale == ALPHA / DIM and float(lora.alpha) == ALPHA
        assert lora.lora_up.weight.dtype == torch.float32
        torch.testing.assert_close(lora.lora_up.weight, sd[f"{key}.lora_up.weight"], rtol=1e-3, atol=1e-3)


def test_load_kohya_state_dict_errors_name_keys(tiny_sd1: TinyComponents, network: LoRANetwork) -> None:
    sd = dict(network.state_dict())
    missing = "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"
    del sd[missing]
    sd["lora_unet_bogus.lora_up.weight"] = torch.zeros(1)
    with pytest.raises(LorakilnError) as err:
        network.load_kohya_state_dict(sd)
    assert missing in str(err.value) and "lora_unet_bogus.lora_up.weight" in str(err.value)

    wrong_rank = create_lora_network(tiny_sd1.unet, [tiny_sd1.text_encoder], SD1, dim=2, alpha=1)
    with pytest.raises(LorakilnError, match="network_dim"):
        wrong_rank.load_kohya_state_dict(network.state_dict())


def test_missing_alpha_means_alpha_equals_rank(network: LoRANetwork) -> None:
    sd = {k: v for k, v in network.state_dict().items() if not k.endswith(".alpha")}
    network.load_kohya_state_dict(sd)
    assert all(lora.scale == 1.0 for _, lora in network.loras())


def test_module_paths_roundtrip_through_keymap(network: LoRANetwork) -> None:
    for key in network:
        component, path = keymap.kohya_to_diffusers_module(key, SD1)
        assert component == network.parts[key]
        live = network.module_paths[key]
        assert path == (live if component == "unet" else keymap.classic_text_model_path(live))


def test_fresh_network_is_a_noop(tiny_sd1: TinyComponents) -> None:
    sample, t, ctx = _unet_inputs()
    with torch.no_grad():
        base = tiny_sd1.unet(sample, t, ctx).sample
        net = create_lora_network(tiny_sd1.unet, [], SD1, dim=4, alpha=1, train_text_encoder=False)
        assert torch.equal(tiny_sd1.unet(sample, t, ctx).sample, base)
    randomize_up(net)  # and the helper really changes things
    with torch.no_grad():
        assert not torch.equal(tiny_sd1.unet(sample, t, ctx).sample, base)
