"""LoHa / LoKr / LoCon checked against the LyCORIS reference implementation (``lycoris-lora``).

For each target (Linear, 1×1 and k×k Conv2d with stride/padding/dilation/groups) and option set,
the reference module is built, its parameters randomised, and copied into ours *by key name*:

(a) identical ``state_dict`` keys, shapes and alpha — so our files are LyCORIS files;
(b) identical ΔW — against the module's ``get_weight`` (what its forward adds) and the
    ``lycoris.functional`` rebuild; see `_assert_diff_weight` for ``get_diff_weight``;
(c) identical forward outputs at multiplier 1 and 0.5.

Plus: identical initialisation under the same seed, the ``factorization`` rule, and the LoCon
target list of ``lycoris.kohya.create_network`` on the tiny SD1 U-Net.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lycoris", reason="the LyCORIS oracle needs `pip install lycoris-lora`")

from lycoris.functional import loha as ref_loha_fn  # noqa: E402
from lycoris.functional import lokr as ref_lokr_fn  # noqa: E402
from lycoris.functional.general import factorization as ref_factorization  # noqa: E402
from lycoris.modules.locon import LoConModule as RefLoCon  # noqa: E402
from lycoris.modules.loha import LohaModule as RefLoha  # noqa: E402
from lycoris.modules.lokr import LokrModule as RefLokr  # noqa: E402

from lorakiln.models.family import SD1  # noqa: E402
from lorakiln.models.names import kohya as keymap  # noqa: E402
from lorakiln.networks.adapters import locon_conv_targets, locon_rank  # noqa: E402
from lorakiln.networks.loha import LoHaModule  # noqa: E402
from lorakiln.networks.lokr import LoKrModule, factorization  # noqa: E402
from lorakiln.networks.lora import LoRAModule  # noqa: E402
from lorakiln.networks.network import find_targets  # noqa: E402


@pytest.fixture(autouse=True)
def _eager_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin LyCORIS to its eager torch path (no triton/tilelang/torch.compile backends)."""
    monkeypatch.setenv("LYCORIS_KERNEL_BACKEND", "torch")


# -- targets ------------------------------------------------------------------------------------

TARGETS: dict[str, Any] = {
    "linear": lambda: nn.Linear(24, 16),
    "conv1x1": lambda: nn.Conv2d(8, 12, 1),
    "conv3x3_s2": lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1),
    "conv3x3_dil_groups": lambda: nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=2),
}
LOKR_TARGETS: dict[str, Any] = {
    "linear": lambda: nn.Linear(96, 128),
    "linear_small": lambda: nn.Linear(64, 32),
    "conv1x1": lambda: nn.Conv2d(16, 48, 1),
    "conv3x3_s2": lambda: nn.Conv2d(32, 64, 3, stride=2, padding=1),
}


def _target(factory: Any, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def _input(target: nn.Module, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, nn.Linear):
        return torch.randn(3, 5, target.in_features, generator=gen)
    return torch.randn(2, target.in_channels, 9, 9, generator=gen)


def _randomize(module: nn.Module, seed: int = 2) -> None:
    """Give every reference parameter non-zero random values (fresh adapters are no-ops)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-6) -> None:
    """max |ours − ref| ≤ rtol · max |ref| (relative to the tensor's scale, so zeros are fine)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    ref = ref.detach().float()
    err = (ours.detach().float() - ref).abs().max().item()
    bound = rtol * max(ref.abs().max().item(), 1e-30)
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


def _assert_same_file_format(ours: nn.Module, ref: nn.Module) -> None:
    """(a): same keys, shapes and alpha value — ``state_dict()`` under a kohya key IS the file."""
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert ours_sd["alpha"].dim() == 0
    assert float(ours_sd["alpha"]) == pytest.approx(float(ref_sd["alpha"]), rel=1e-7)
    assert ours.scale == pytest.approx(ref.scale, rel=1e-7)


def _copy_reference(ours: nn.Module, ref: nn.Module) -> None:
    ours.load_state_dict({k: v.detach() for k, v in ref.state_dict().items()}, strict=True)


def _assert_diff_weight(ours: nn.Module, ref: nn.Module) -> None:
    """(b): ΔW equals the reference's.

    The binding comparison is ``get_weight(shape)``: the ΔW the reference's forward adds
    (``LohaModule.forward``/``LokrModule._rebuild_forward``), which already includes
    ``scale = alpha/dim``. Surprise in lycoris-lora 4.1.3: ``LohaModule.get_diff_weight`` and
    ``LokrModule.get_diff_weight`` multiply ``get_weight`` by ``self.scale`` *again*
    (``diff = self.get_weight(shape) * scale``), i.e. return scale²·ΔW_raw, unlike
    ``LoConModule.get_diff_weight`` (scale once) and unlike the forward and every file reader
    (A1111, ComfyUI: scale once). We match the forward; ``get_diff_weight`` is accepted either as
    4.1.3 computes it (ΔW·scale) or as a fixed release would (ΔW).
    """
    delta = ours.delta_weight()
    _assert_rel_close(delta, ref.get_weight(ref.shape))
    diff, bias = ref.get_diff_weight()
    assert bias is None
    diff = diff.reshape(delta.shape)
    try:
        _assert_rel_close(delta * ref.scale, diff)
    except AssertionError:
        _assert_rel_close(delta, diff)


def _assert_forward(ours: nn.Module, ref: nn.Module, base: nn.Module) -> None:
    """(c): outputs of the patched layers agree at multiplier 1 and 0.5 (and ≠ base)."""
    ref_layer, our_layer = ref.org_module[0], ours.target  # each its own copy of `base`
    assert ref_layer is not our_layer
    x = _input(base)
    base_out = base(x)
    ref.apply_to()
    ours.attach()
    try:
        for multiplier in (1.0, 0.5):
            ref.multiplier = ours.multiplier = multiplier
            with torch.no_grad():
                want, got = ref_layer(x), our_layer(x)
            assert not torch.allclose(want, base_out)
            # The reference forms (W + ΔW·m) − W in fp32, so allow a few ulps of |W·x|.
            _assert_rel_close(got, want, rtol=2e-6)
    finally:
        ref.restore()
        ours.detach()


# -- LoHa ---------------------------------------------------------------------------------------

LOHA_CASES = [
    (target, dim, alpha, tucker)
    for target in TARGETS
    for dim, alpha in ((2, None), (4, 1.0), (3, 7.5))
    for tucker in ((False, True) if target.startswith("conv3x3") else (False,))
]


@pytest.mark.parametrize(("target", "dim", "alpha", "tucker"), LOHA_CASES)
def test_loha_matches_lycoris(target: str, dim: int, alpha: float | None, tucker: bool) -> None:
    base = _target(TARGETS[target])
    ref = RefLoha("ref", copy.deepcopy(base), 1.0, dim, alpha, use_tucker=tucker)
    ours = LoHaModule(copy.deepcopy(base), dim, alpha, use_tucker=tucker)
    assert ours.tucker == ref.tucker == tucker
    _assert_same_file_format(ours, ref)
    _randomize(ref)
    _copy_reference(ours, ref)
    _assert_diff_weight(ours, ref)
    # lycoris.functional rebuild (argument order (w1d, w1u, w2d, w2u, t1, t2) = (b, a, b, a, t, t)).
    functional = ref_loha_fn.diff_weight(
        ref.hada_w1_b, ref.hada_w1_a, ref.hada_w2_b, ref.hada_w2_a,
        ref.hada_t1 if tucker else None, ref.hada_t2 if tucker else None, gamma=torch.tensor(ref.scale),
    )  # fmt: skip
    _assert_rel_close(ours.delta_weight(), functional.reshape(ours.target_shape))
    _assert_forward(ours, ref, base)


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_init_matches_lycoris_seed_for_seed(tucker: bool) -> None:
    base = _target(TARGETS["conv3x3_s2"])
    torch.manual_seed(123)
    ref = RefLoha("ref", copy.deepcopy(base), 1.0, 4, 2.0, use_tucker=tucker)
    torch.manual_seed(123)
    ours = LoHaModule(copy.deepcopy(base), 4, 2.0, use_tucker=tucker)
    ref_sd = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key].detach()), key
    assert torch.count_nonzero(ours.delta_weight()) == 0


# -- LoKr ---------------------------------------------------------------------------------------

# (target, dim, alpha, options): the comments say which factor layout LyCORIS picks.
LOKR_CASES: list[tuple[str, int, float | None, dict[str, Any]]] = [
    ("linear", 2, 1.0, {}),                                       # w1 full, w2 = a@b
    ("linear", 2, 1.0, {"decompose_both": True}),                 # both a@b
    ("linear", 4, 3.0, {"decompose_both": True}),                 # dim too big for w1: w1 full
    ("linear", 8, 3.0, {}),                                       # dim too big for w2: both full ⇒ scale 1
    ("linear", 1, None, {"factor": 4, "decompose_both": True}),   # factor 4: w1 [4,4], w2 [32,24]
    ("linear", 4, 2.0, {"factor": 4}),
    ("linear_small", 2, 4.0, {"factor": 8, "decompose_both": True}),
    ("linear", 2, 1.0, {"unbalanced_factorization": True}),
    ("linear", 2, 5.0, {"full_matrix": True}),                     # forced full ⇒ scale 1
    ("conv1x1", 2, 1.0, {}),
    ("conv1x1", 2, 1.0, {"factor": 4, "use_tucker": True}),       # 1×1: Tucker is ignored
    ("conv3x3_s2", 2, 1.0, {}),                                   # w2_b flattened [r, d·9]
    ("conv3x3_s2", 2, 1.0, {"use_tucker": True}),                 # lokr_t2 [r, r, 3, 3]
    ("conv3x3_s2", 1, 3.0, {"use_tucker": True, "decompose_both": True}),
    ("conv3x3_s2", 1, 3.0, {"decompose_both": True}),
    ("conv3x3_s2", 8, 2.0, {}),                                   # full 4-D lokr_w2
    ("conv3x3_s2", 2, 2.0, {"factor": 4, "use_tucker": True}),
]  # fmt: skip


def _lokr_ref_tensors(ref: RefLokr) -> dict[str, torch.Tensor | None]:
    return {
        "w1": ref.lokr_w1 if ref.use_w1 else None,
        "w1a": None if ref.use_w1 else ref.lokr_w1_a,
        "w1b": None if ref.use_w1 else ref.lokr_w1_b,
        "w2": ref.lokr_w2 if ref.use_w2 else None,
        "w2a": None if ref.use_w2 else ref.lokr_w2_a,
        "w2b": None if ref.use_w2 else ref.lokr_w2_b,
        "t": ref.lokr_t2 if ref.tucker and not ref.use_w2 else None,
    }


@pytest.mark.parametrize(("target", "dim", "alpha", "opts"), LOKR_CASES)
def test_lokr_matches_lycoris(target: str, dim: int, alpha: float | None, opts: dict[str, Any]) -> None:
    base = _target(LOKR_TARGETS[target])
    ref = RefLokr("ref", copy.deepcopy(base), 1.0, dim, alpha, **opts)
    ours = LoKrModule(copy.deepcopy(base), dim, alpha, **opts)
    assert (ours.use_w1, ours.use_w2, ours.tucker) == (ref.use_w1, ref.use_w2, ref.tucker)
    _assert_same_file_format(ours, ref)
    if ours.use_w1 and ours.use_w2:
        assert ours.scale == 1.0  # LyCORIS pins alpha = dim when no side is decomposed
    _randomize(ref)
    _copy_reference(ours, ref)
    _assert_diff_weight(ours, ref)
    functional = ref_lokr_fn.kron_weight(*_lokr_ref_tensors(ref).values(), scale=ref.scale)
    _assert_rel_close(ours.delta_weight(), functional.reshape(ours.target_shape))
    _assert_forward(ours, ref, base)


def test_lokr_layouts_covered() -> None:
    """The case table really exercises every factor layout LyCORIS can produce."""
    seen = set()
    for target, dim, alpha, opts in LOKR_CASES:
        m = LoKrModule(_target(LOKR_TARGETS[target]), dim, alpha, **opts)
        seen.add((m.use_w1, m.use_w2, m.tucker and not m.use_w2, len(m.target_shape)))
    assert {(True, False, False, 2), (False, False, False, 2), (True, True, False, 2)} <= seen
    assert {
        (True, False, False, 4),
        (True, False, True, 4),
        (False, False, True, 4),
        (True, True, False, 4),
    } <= seen


@pytest.mark.parametrize("opts", [{}, {"decompose_both": True, "use_tucker": True}, {"full_matrix": True}])
def test_lokr_init_matches_lycoris_seed_for_seed(opts: dict[str, Any]) -> None:
    base = _target(LOKR_TARGETS["conv3x3_s2"])
    torch.manual_seed(7)
    ref = RefLokr("ref", copy.deepcopy(base), 1.0, 1, 1.0, **opts)
    torch.manual_seed(7)
    ours = LoKrModule(copy.deepcopy(base), 1, 1.0, **opts)
    ref_sd = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key].detach()), key
    assert torch.count_nonzero(ours.delta_weight()) == 0


def test_factorization_matches_lycoris() -> None:
    for dimension in range(1, 400):
        for factor in (-1, 0, 1, 2, 3, 4, 5, 8, 16, 32):
            assert factorization(dimension, factor) == ref_factorization(dimension, factor), (
                dimension,
                factor,
            )
    for dimension in (320, 640, 768, 1280, 2048, 2560, 5120):  # SD widths
        for factor in (-1, 4, 8, 16):
            assert factorization(dimension, factor) == ref_factorization(dimension, factor), (
                dimension,
                factor,
            )


# -- file readers -------------------------------------------------------------------------------


def _reader_scale(sd: dict[str, torch.Tensor], rank_keys: tuple[str, ...]) -> float:
    """How A1111/ComfyUI read a LyCORIS module's scale: alpha / rank of the first ``*_b`` factor
    present, else 1 (A1111 ``network_lokr.py``; A1111 ``network_hada.py`` uses ``hada_w1_b``)."""
    for key in rank_keys:
        if key in sd:
            return float(sd["alpha"]) / sd[key].shape[0]
    return 1.0


@pytest.mark.parametrize(("target", "dim", "alpha", "opts"), LOKR_CASES)
def test_lokr_file_scale_is_what_readers_compute(
    target: str, dim: int, alpha: float | None, opts: dict
) -> None:
    ours = LoKrModule(_target(LOKR_TARGETS[target]), dim, alpha, **opts)
    assert _reader_scale(ours.state_dict(), ("lokr_w1_b", "lokr_w2_b")) == pytest.approx(ours.scale)


@pytest.mark.parametrize(("target", "dim", "alpha", "tucker"), LOHA_CASES)
def test_loha_file_scale_is_what_readers_compute(
    target: str, dim: int, alpha: float | None, tucker: bool
) -> None:
    ours = LoHaModule(_target(TARGETS[target]), dim, alpha, use_tucker=tucker)
    assert _reader_scale(ours.state_dict(), ("hada_w1_b",)) == pytest.approx(ours.scale)


# -- LoCon --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["linear", "conv1x1", "conv3x3_s2"])
def test_locon_module_matches_lycoris(target: str) -> None:
    """LoCon is our LoRAModule on conv layers: same keys and outputs as LyCORIS ``LoConModule``."""
    base = _target(TARGETS[target])
    ref = RefLoCon("ref", copy.deepcopy(base), 1.0, 4, 2.0)
    ours = LoRAModule(copy.deepcopy(base), 4, 2.0)
    _assert_same_file_format(ours, ref)
    _randomize(ref)
    _copy_reference(ours, ref)
    diff, _ = ref.get_diff_weight()
    _assert_rel_close(ours.delta_weight(), diff.reshape(ours.target_shape))
    _assert_forward(ours, ref, base)


#: The SD-relevant part of LyCORIS's "full" preset (``lycoris/config.py``): its target classes for
#: SD U-Nets and ``FULL_UNET_NAMES``. Surprise in lycoris-lora 4.1.3: "full" itself cannot be built
#: on a diffusers U-Net — it also lists ``TimestepEmbedding`` (added for Anima), which is the class
#: of diffusers' ``time_embedding``, so ``time_embedding.linear_1`` is selected by class *and* by
#: name and ``LycorisNetworkKohya.__init__`` asserts "duplicated lora name". A preset file without
#: the non-SD classes is what a user of that version would have to pass.
_SD_FULL_PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


def test_locon_targets_match_lycoris_kohya_network(tmp_path: Path) -> None:
    """``lycoris.kohya.create_network(algo="locon")`` with the SD part of the "full" preset, on the
    tiny SD1 U-Net, builds exactly: kohya's default LoRA targets + `locon_conv_targets(
    lycoris_full=True)`, with the ranks/alphas of `locon_rank`."""
    from lycoris.config import PRESET
    from lycoris.kohya import LycorisNetworkKohya, create_network

    from lorakiln.models.tiny import build_tiny_sd1_bundle

    unet = build_tiny_sd1_bundle(seed=0).unet
    dim, alpha, conv_dim, conv_alpha = 4, 2.0, 8, 3.0
    preset = tmp_path / "sd_full.toml"
    preset.write_text(_SD_FULL_PRESET)
    try:
        network = create_network(
            1.0, dim, alpha, None, None, unet,
            algo="locon", conv_dim=conv_dim, conv_alpha=conv_alpha, preset=str(preset),
        )  # fmt: skip
    finally:
        LycorisNetworkKohya.apply_preset(PRESET["full"])  # the preset is class-level state
    theirs = {m.lora_name: (m.lora_dim, float(m.alpha)) for m in network.unet_loras}
    ours = {
        keymap.unet_kohya_name(path, SD1): (dim, alpha)
        for path, _ in find_targets(unet, SD1.unet_target_blocks, allow_conv=True)
    }
    for path, layer in locon_conv_targets(unet, lycoris_full=True):
        ours[keymap.unet_kohya_name(path, SD1)] = locon_rank(layer, dim, alpha, conv_dim, conv_alpha)
    assert ours == theirs
    # 3×3 convs: 22 resnets × (conv1, conv2) + 3 down- + 3 upsamplers + conv_in + conv_out.
    assert sum(1 for rank, _ in theirs.values() if rank == conv_dim) == 22 * 2 + 6 + 2
