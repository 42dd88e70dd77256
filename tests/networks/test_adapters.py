"""Adapter registry, hook behaviour of LoHa/LoKr, and the LoCon target list (no LyCORIS needed)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lorakiln.models.family import SD1
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.adapters import (
    ADAPTERS,
    LYCORIS_FULL_UNET_NAMES,
    adapter_spec,
    locon_conv_targets,
    locon_rank,
    make_adapter,
)
from lorakiln.networks.loha import LoHaModule, loha_delta
from lorakiln.networks.lokr import LoKrModule, factorization, lokr_delta
from lorakiln.networks.lora import LoRAModule

Factory = Callable[[], nn.Module]

TARGETS: dict[str, Factory] = {
    "linear": lambda: nn.Linear(24, 32),
    "conv1x1": lambda: nn.Conv2d(16, 32, 1),
    "conv3x3_s2": lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1),
}

#: (algo, options) pairs covering every module class and its main layouts.
ALGOS: list[tuple[str, dict]] = [
    ("lora", {}),
    ("locon", {}),
    ("loha", {}),
    ("loha", {"use_tucker": True}),
    ("lokr", {}),
    ("lokr", {"decompose_both": True, "use_tucker": True, "factor": 4}),
    ("lokr", {"full_matrix": True}),
]
CASES = [(algo, opts, target) for algo, opts in ALGOS for target in TARGETS]
IDS = [f"{algo}-{'-'.join(opts) or 'default'}-{target}" for algo, opts, target in CASES]


def _layer(target: str) -> nn.Module:
    torch.manual_seed(0)
    return TARGETS[target]()


def _input(layer: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(2, 3, layer.in_features, generator=gen)
    return torch.randn(2, layer.in_channels, 8, 8, generator=gen)


def _randomize(adapter: nn.Module) -> None:
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in sorted(adapter.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize(("algo", "opts", "target"), CASES, ids=IDS)
def test_fresh_adapter_is_exact_noop(algo: str, opts: dict, target: str) -> None:
    layer = _layer(target)
    x = _input(layer)
    base = layer(x)
    adapter = make_adapter(algo, layer, 4, 2.0, **opts)
    adapter.attach()
    assert torch.equal(layer(x), base)
    assert torch.count_nonzero(adapter.delta_weight()) == 0


@pytest.mark.parametrize(("algo", "opts", "target"), CASES, ids=IDS)
def test_detach_restores_base_bit_for_bit(algo: str, opts: dict, target: str) -> None:
    layer = _layer(target)
    x = _input(layer)
    base = layer(x)
    adapter = make_adapter(algo, layer, 4, 2.0, **opts)
    _randomize(adapter)
    adapter.attach()
    adapter.attach()  # idempotent: one hook only
    patched = layer(x)
    assert not torch.allclose(patched, base)
    adapter.detach()
    adapter.detach()
    assert torch.equal(layer(x), base)
    adapter.attach()
    assert torch.equal(layer(x), patched)


@pytest.mark.parametrize(("algo", "opts", "target"), CASES, ids=IDS)
def test_hook_equals_merged_weight_and_multiplier(algo: str, opts: dict, target: str) -> None:
    """The hook adds exactly F(x; multiplier·ΔW): the same as merging ΔW into the weight."""
    layer = _layer(target)
    clean = copy.deepcopy(layer)  # before attaching: a deepcopy would copy the hook too
    x = _input(layer)
    adapter = make_adapter(algo, layer, 4, 2.0, **opts)
    _randomize(adapter)
    adapter.attach()
    for multiplier in (1.0, 0.5, -1.0):
        adapter.multiplier = multiplier
        merged = copy.deepcopy(clean)
        with torch.no_grad():
            merged.weight += adapter.delta_weight() * multiplier
            torch.testing.assert_close(layer(x), merged(x), rtol=1e-5, atol=1e-5)
    adapter.multiplier = 0.0
    assert torch.equal(layer(x), clean(x))


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_half_precision_base_keeps_fp32_params(algo: str) -> None:
    layer = _layer("conv3x3_s2").to(torch.bfloat16)
    adapter = make_adapter(algo, layer, 2, 1.0)
    _randomize(adapter)
    adapter.attach()
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert adapter.alpha.dtype == torch.float32
    out = layer(_input(layer).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_gradients_reach_every_factor() -> None:
    for adapter in (
        LoHaModule(_layer("conv3x3_s2"), 2, use_tucker=True),
        LoKrModule(_layer("conv3x3_s2"), 1, decompose_both=True, use_tucker=True, factor=4),
    ):
        _randomize(adapter)
        adapter.attach()
        adapter.target(_input(adapter.target)).square().sum().backward()
        for name, p in adapter.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        assert adapter.target.weight.grad is not None  # base not frozen here; only wiring checked


# -- maths --------------------------------------------------------------------------------------


def test_loha_delta_is_hadamard_of_two_low_rank_products() -> None:
    gen = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=gen) for s in ((6, 2), (2, 5), (6, 2), (2, 5)))
    expected = (w1a @ w1b) * (w2a @ w2b) * 0.25
    torch.testing.assert_close(loha_delta(w1a, w1b, w2a, w2b, 0.25, (6, 5)), expected)
    # conv: `*_b` is [r, in·kh·kw] and ΔW is reshaped to the kernel
    w1b3, w2b3 = torch.randn(2, 5 * 9, generator=gen), torch.randn(2, 5 * 9, generator=gen)
    assert loha_delta(w1a, w1b3, w2a, w2b3, 1.0, (6, 5, 3, 3)).shape == (6, 5, 3, 3)
    with pytest.raises(ValueError, match="hada_t1 and hada_t2"):
        loha_delta(w1a, w1b, w2a, w2b, 1.0, (6, 5), t1=torch.zeros(2, 2))


def test_lokr_delta_is_kronecker_product() -> None:
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(2, 3, generator=gen)
    w2a, w2b = torch.randn(4, 2, generator=gen), torch.randn(2, 5, generator=gen)
    delta = lokr_delta(scale=0.5, target_shape=(8, 15), w1=w1, w2_a=w2a, w2_b=w2b)
    torch.testing.assert_close(delta, torch.kron(w1, w2a @ w2b) * 0.5)
    # block (i, j) of kron is w1[i, j] · w2
    torch.testing.assert_close(delta[4:8, 5:10], w1[1, 1] * (w2a @ w2b) * 0.5)
    # a full conv w2 keeps its kernel axes; the flattened form gives the same ΔW
    w2 = torch.randn(4, 5, 3, 3, generator=gen)
    full = lokr_delta(scale=1.0, target_shape=(8, 15, 3, 3), w1=w1, w2=w2)
    flat = lokr_delta(
        scale=1.0, target_shape=(8, 15, 3, 3), w1=w1, w2_a=w2.reshape(4, 45), w2_b=torch.eye(45)
    )
    torch.testing.assert_close(full, flat)
    with pytest.raises(ValueError, match="lokr_w1"):
        lokr_delta(scale=1.0, target_shape=(8, 15), w2=w2)
    with pytest.raises(ValueError, match="not both"):
        lokr_delta(scale=1.0, target_shape=(8, 15), w1=w1, w1_a=w1, w2=w2)


def test_factorization_table() -> None:
    """The examples of LyCORIS's ``factorization`` docstring, where they are right.

    Its docstring is wrong for 360: the function (and so every LoKr file) gives (18, 20) for
    factor −1, not (8, 45), and (15, 24) for factor 16, not (12, 30) — it walks the divisors up
    to √360 / the factor. We follow the function (the oracle test compares with it directly).
    """
    table = {
        -1: {127: (1, 127), 128: (8, 16), 250: (10, 25), 360: (18, 20), 512: (16, 32), 1024: (32, 32)},
        2: {127: (1, 127), 128: (2, 64), 250: (2, 125), 360: (2, 180), 512: (2, 256), 1024: (2, 512)},
        4: {127: (1, 127), 128: (4, 32), 250: (2, 125), 360: (4, 90), 512: (4, 128), 1024: (4, 256)},
        8: {127: (1, 127), 128: (8, 16), 250: (5, 50), 360: (8, 45), 512: (8, 64), 1024: (8, 128)},
        16: {127: (1, 127), 128: (8, 16), 250: (10, 25), 360: (15, 24), 512: (16, 32), 1024: (16, 64)},
    }
    for factor, rows in table.items():
        for dimension, split in rows.items():
            assert factorization(dimension, factor) == split, (dimension, factor)


def test_lokr_alpha_rule() -> None:
    layer = nn.Linear(96, 128)
    assert LoKrModule(layer, 2, 1.0).scale == 0.5  # w2 decomposed: alpha / dim
    both_full = LoKrModule(layer, 8, 3.0)  # dim too large for w2 [16, 12] and w1 not decomposed
    assert (both_full.use_w1, both_full.use_w2) == (True, True)
    assert both_full.scale == 1.0 and float(both_full.alpha) == 8.0
    both_full.set_alpha(3.0)
    assert both_full.scale == 1.0  # stays pinned
    assert LoKrModule(layer, 2, None).scale == 1.0  # alpha None → dim


def test_loha_set_alpha() -> None:
    loha = LoHaModule(nn.Linear(8, 8), 4, 2.0)
    assert loha.scale == 0.5 and float(loha.alpha) == 2.0
    loha.set_alpha(None)
    assert loha.scale == 1.0 and float(loha.alpha) == 4.0


# -- registry -----------------------------------------------------------------------------------


def test_registry_classes_and_keys() -> None:
    assert list(ADAPTERS) == ["lora", "locon", "loha", "lokr"]
    layer = _layer("conv3x3_s2")
    expected = {"lora": LoRAModule, "locon": LoRAModule, "loha": LoHaModule, "lokr": LoKrModule}
    for algo, cls in expected.items():
        assert adapter_spec(algo).module_class is cls
        assert type(make_adapter(algo.upper(), layer, 2, 1.0)) is cls  # case-insensitive
    for algo, opts in ALGOS:
        adapter = make_adapter(algo, layer, 2, 1.0, **opts)
        assert set(adapter.state_dict()) <= set(adapter_spec(algo).key_suffixes), algo


def test_unknown_algorithm_is_named_with_valid_list() -> None:
    with pytest.raises(ValueError, match=r"unknown network algorithm 'dora'.*lora, locon, loha, lokr"):
        make_adapter("dora", nn.Linear(4, 4), 2, 1.0)
    with pytest.raises(ValueError, match="'ia3'"):
        adapter_spec("ia3")


def test_unknown_option_names_the_algorithm() -> None:
    with pytest.raises(TypeError, match=r"'loha'.*factor"):
        make_adapter("loha", nn.Linear(4, 4), 2, 1.0, factor=4)
    with pytest.raises(ValueError, match="dropout"):
        make_adapter("lokr", nn.Linear(4, 4), 2, 1.0, dropout=0.1)


def test_unsupported_targets() -> None:
    with pytest.raises(TypeError, match="nn.Linear and nn.Conv2d"):
        LoHaModule(nn.Conv1d(4, 4, 3), 2)
    with pytest.raises(ValueError, match="padding_mode"):
        LoKrModule(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), 2)


# -- LoCon targets ------------------------------------------------------------------------------


def _expected_locon_paths() -> set[str]:
    """Written from the tiny SD1 structure (4 levels, 2 resnets down / 3 up, 32-32-64-64
    channels), not from the code under test: conv_shortcut exists where channels change."""
    paths: set[str] = set()
    resnets = [f"down_blocks.{i}.resnets.{j}" for i in range(4) for j in range(2)]
    resnets += [f"mid_block.resnets.{j}" for j in range(2)]
    resnets += [f"up_blocks.{i}.resnets.{j}" for i in range(4) for j in range(3)]
    for resnet in resnets:
        paths |= {f"{resnet}.conv1", f"{resnet}.time_emb_proj", f"{resnet}.conv2"}
    paths |= {"down_blocks.2.resnets.0.conv_shortcut"}
    paths |= {f"up_blocks.{i}.resnets.{j}.conv_shortcut" for i in range(4) for j in range(3)}
    paths |= {f"down_blocks.{i}.downsamplers.0.conv" for i in range(3)}
    paths |= {f"up_blocks.{i}.upsamplers.0.conv" for i in range(3)}
    return paths


@pytest.fixture(scope="module")
def tiny_unet() -> nn.Module:
    from lorakiln.models.tiny import build_tiny_sd1_bundle

    return build_tiny_sd1_bundle(seed=0).unet


def test_locon_targets_on_tiny_sd1(tiny_unet: nn.Module) -> None:
    targets = list(locon_conv_targets(tiny_unet))
    paths = [path for path, _ in targets]
    assert len(paths) == len(set(paths)) == 85
    assert set(paths) == _expected_locon_paths()
    names = {keymap.unet_kohya_name(path, SD1) for path in paths}
    for name in (  # kohya sd-scripts default targets and LoCon (SD1 names)
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_down_blocks_0_resnets_1_conv2",
        "lora_unet_mid_block_resnets_1_time_emb_proj",
        "lora_unet_up_blocks_3_resnets_2_conv_shortcut",
        "lora_unet_down_blocks_2_downsamplers_0_conv",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
    ):
        assert name in names
    # No overlap with the default (Transformer2DModel) LoRA targets.
    assert not any(".attentions." in path for path in paths)


def test_locon_ranks_follow_kohya(tiny_unet: nn.Module) -> None:
    by_path = dict(locon_conv_targets(tiny_unet))
    rank = {path: locon_rank(layer, 4, 2.0, 8, None) for path, layer in by_path.items()}
    assert rank["down_blocks.0.resnets.0.conv1"] == (8, 8.0)  # 3×3 → conv_dim, alpha None → rank
    assert rank["down_blocks.1.downsamplers.0.conv"] == (8, 8.0)
    assert rank["up_blocks.0.resnets.0.conv_shortcut"] == (4, 2.0)  # 1×1 → network_dim
    assert rank["mid_block.resnets.0.time_emb_proj"] == (4, 2.0)  # Linear → network_dim
    n_conv = sum(1 for r, _ in rank.values() if r == 8)
    assert n_conv == 22 * 2 + 6


def test_locon_lycoris_full_adds_top_level_layers(tiny_unet: nn.Module) -> None:
    base = {path for path, _ in locon_conv_targets(tiny_unet)}
    full = [path for path, _ in locon_conv_targets(tiny_unet, lycoris_full=True)]
    assert set(full) - base == set(LYCORIS_FULL_UNET_NAMES)
    assert len(full) == len(set(full))


def test_locon_adapter_on_strided_conv(tiny_unet: nn.Module) -> None:
    """LoCon = LoRAModule on a 3×3 stride-2 conv: down keeps the kernel/stride, up is 1×1."""
    layer = copy.deepcopy(dict(locon_conv_targets(tiny_unet))["down_blocks.0.downsamplers.0.conv"])
    lora = make_adapter("locon", layer, 8, 1.0)
    assert lora.lora_down.weight.shape == (8, 32, 3, 3) and lora.lora_down.stride == (2, 2)
    assert lora.lora_up.weight.shape == (32, 8, 1, 1)
