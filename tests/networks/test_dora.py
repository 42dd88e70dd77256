"""DoRA (``dora_wd``) module maths: against lycoris-lora, the magnitude axis, foreign files.

* **Oracle.** LyCORIS ``LoConModule(weight_decompose=True, wd_on_out=False)`` and ours get the same
  tensors: same file keys/shapes, same init seed for seed, same forward at multiplier 1, and the
  fused weight at strength ``s`` equals ``lycoris.functional.general.apply_dora_scale`` (the
  client rule ``W + s·(W' − W)``), which LoConModule's own multiplier does *not* follow.
* **Axis.** A1111's and ComfyUI's DoRA rules (A1111 ``apply_weight_decompose``, ComfyUI ``weight_decompose``; written here from their
  description, not their code) agree on ``[1, in]`` magnitudes and disagree on ``[out, 1]``.

The network on tiny SD1 (training, files, resume, generation, config) is in `test_dora_network.py`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lycoris", reason="the LyCORIS oracle needs `pip install lycoris-lora`")

from lycoris.functional.general import apply_dora_scale  # noqa: E402
from lycoris.modules.locon import LoConModule as RefLoCon  # noqa: E402
from lycoris.modules.loha import LohaModule as RefLoha  # noqa: E402

from lorakiln.networks.dora import DoRAModule, dora_weight, magnitude_axis, weight_norm  # noqa: E402
from lorakiln.networks.file_adapters import FileDeltaAdapter  # noqa: E402


@pytest.fixture(autouse=True)
def _eager_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin LyCORIS to its eager torch path (no triton/tilelang/torch.compile backends)."""
    monkeypatch.setenv("LYCORIS_KERNEL_BACKEND", "torch")


TARGETS: dict[str, Any] = {
    "linear": lambda: nn.Linear(24, 16),
    "conv1x1": lambda: nn.Conv2d(8, 12, 1),
    "conv3x3_s2": lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1),
}


def _target(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TARGETS[name]()


def _input(target: nn.Module, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, nn.Linear):
        return torch.randn(3, 5, target.in_features, generator=gen)
    return torch.randn(2, target.in_channels, 9, 9, generator=gen)


def _randomize(module: nn.Module, seed: int = 2) -> None:
    """Non-zero factors, and magnitudes moved away from ‖W‖ (but kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(p * (1 + 0.3 * noise.tanh()) if name == "dora_scale" else noise * 0.3)


def _assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 2e-6) -> None:
    """max |ours − ref| ≤ rtol · max |ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = (ours.detach().float() - ref.detach().float()).abs().max().item()
    bound = rtol * max(ref.detach().float().abs().max().item(), 1e-30)
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


# -- the maths against LyCORIS --------------------------------------------------------------------

CASES = [(t, dim, alpha) for t in TARGETS for dim, alpha in ((4, 2.0), (3, None), (2, 6.0))]


@pytest.mark.parametrize(("target", "dim", "alpha"), CASES)
def test_dora_matches_lycoris(target: str, dim: int, alpha: float | None) -> None:
    base = _target(target)
    torch.manual_seed(123)
    ref = RefLoCon("ref", copy.deepcopy(base), 1.0, dim, alpha, weight_decompose=True, wd_on_out=False)
    torch.manual_seed(123)
    ours = DoRAModule(copy.deepcopy(base), dim, alpha)
    # Same file keys, shapes and values — seed for seed, dora_scale = ‖W‖ per input column.
    ref_sd = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key].detach()), key
    in_dim = base.weight.shape[1]
    assert tuple(ours.dora_scale.shape) == ((1, in_dim) if target == "linear" else (1, in_dim, 1, 1))
    assert ours.scale == pytest.approx(ref.scale)

    _randomize(ref)
    ours.load_state_dict({k: v.detach() for k, v in ref.state_dict().items()}, strict=True)
    W = base.weight.detach()
    lora_delta = ref.get_diff_weight()[0].reshape(W.shape)  # (alpha/dim)·up@down
    _assert_rel_close(ours.lora_delta(), lora_delta)
    merged, _ = ref.get_merged_weight()  # LyCORIS's W' at multiplier 1
    _assert_rel_close(W + ours.delta_weight(), merged)
    for strength in (1.0, 0.5, 0.0, 1.7):  # the client rule W + s·(W' − W)
        want = apply_dora_scale(W, lora_delta, ref.dora_scale.detach(), strength)
        _assert_rel_close(W + strength * ours.delta_weight(), want)

    x = _input(base)
    base_out = base(x)
    ref.apply_to()
    ours.attach()
    try:
        with torch.no_grad():
            want, got = ref.org_module[0](x), ours.target(x)
        assert not torch.allclose(want, base_out)
        _assert_rel_close(got, want)
        # At s ≠ 1 LoConModule keeps the whole ΔW and interpolates only the rescale factor; the
        # clients (and we) interpolate the weight change. Prove the test tells them apart.
        ref.multiplier = ours.multiplier = 0.5
        with torch.no_grad():
            lyco_half, ours_half = ref.org_module[0](x), ours.target(x)
        op = nn.functional.linear if target == "linear" else (
            lambda inp, w: nn.functional.conv2d(inp, w, None, base.stride, base.padding))
        client = op(x, apply_dora_scale(W, lora_delta, ref.dora_scale.detach(), 0.5)) + (
            base.bias if target == "linear" else base.bias[:, None, None])
        _assert_rel_close(ours_half, client, rtol=1e-5)
        assert not torch.allclose(lyco_half, client, atol=1e-4)
    finally:
        ref.restore()
        ours.detach()


@pytest.mark.parametrize("target", list(TARGETS))
def test_fresh_module_is_an_exact_no_op(target: str) -> None:
    base = _target(target)
    x = _input(base)
    want = base(x).detach()
    module = DoRAModule(base, 4, 1.0)
    assert torch.count_nonzero(module.delta_weight()) == 0
    module.attach()
    torch.testing.assert_close(base(x), want, rtol=0, atol=0)
    module.detach()


def test_norm_is_detached_in_the_backward_pass() -> None:
    """Gradients are those of ``m · V / stopgrad(‖V‖)`` (paper §4.3), not of the full quotient."""
    base = _target("linear")
    module = DoRAModule(base, 4, 2.0)
    _randomize(module)
    x = _input(base)
    module.attach()
    base(x).square().sum().backward()
    module.detach()
    ours = {n: p.grad.clone() for n, p in module.named_parameters()}

    def grads(detach: bool) -> dict[str, torch.Tensor]:
        params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
        W = base.weight.detach()
        v = W + module.scale * params["lora_up.weight"] @ params["lora_down.weight"]
        norm = v.norm(dim=0, keepdim=True)
        w_new = params["dora_scale"] * v / (norm.detach() if detach else norm)
        nn.functional.linear(x, w_new, base.bias).square().sum().backward()
        return {n: p.grad for n, p in params.items()}

    detached, full = grads(True), grads(False)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, detached[name], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(detached["lora_up.weight"], full["lora_up.weight"], atol=1e-4)


# -- the axis: what A1111 and ComfyUI compute --------------------------------------------------------


def _a1111_weight(W: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    """A1111 (after its DoRA scale fix): merged = W + (alpha/dim)·up@down, normalised by the norm of
    each *input* column whatever ``m``'s shape, then W + s·(merged·m/norm − W)."""
    merged = W + delta
    norm = merged.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1)
    norm = norm.reshape(W.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
    return W + s * (merged * (m / norm) - W)


def _comfy_weight(W: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    """ComfyUI: output axis iff m.shape[0] == W.shape[0], and then the norm is of the *base* W;
    otherwise the input-column norm of W + ΔW; eps added; W + s·(W' − W)."""
    calc = W + delta
    if m.shape[0] == W.shape[0]:
        norm = W.reshape(W.shape[0], -1).norm(dim=1).reshape(W.shape[0], *[1] * (W.dim() - 1))
    else:
        norm = calc.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1)
        norm = norm.reshape(W.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
    return W + s * (calc * (m / (norm + torch.finfo(W.dtype).eps)) - W)


@pytest.mark.parametrize("target", list(TARGETS))
def test_input_axis_is_the_one_a1111_and_comfyui_agree_on(target: str) -> None:
    base = _target(target)
    W = base.weight.detach()
    module = DoRAModule(copy.deepcopy(base), 4, 2.0)
    _randomize(module)
    delta = module.lora_delta().detach()
    m_in = module.dora_scale.detach()
    for s in (1.0, 0.6):
        ours = W + s * module.delta_weight().detach()
        _assert_rel_close(_a1111_weight(W, delta, m_in, s), ours, rtol=1e-5)
        _assert_rel_close(_comfy_weight(W, delta, m_in, s), ours, rtol=1e-5)
    # The same update with LyCORIS's default per-output-row magnitudes: the clients disagree.
    m_out = weight_norm(W + delta, "output") * 1.1
    assert magnitude_axis(tuple(m_out.shape), W.shape) == "output"
    a1111, comfy = _a1111_weight(W, delta, m_out, 1.0), _comfy_weight(W, delta, m_out, 1.0)
    assert not torch.allclose(a1111, comfy, rtol=1e-2)
    assert not torch.allclose(comfy, dora_weight(W, delta, m_out, "output"), rtol=1e-3)


def test_magnitude_axis_from_shape() -> None:
    assert magnitude_axis((1, 24), (16, 24)) == "input"
    assert magnitude_axis((1, 8, 1, 1), (12, 8, 3, 3)) == "input"
    assert magnitude_axis((16, 1), (16, 24)) == "output"
    assert magnitude_axis((12, 1, 1, 1), (12, 8, 3, 3)) == "output"
    assert magnitude_axis((16, 1), (16, 16)) == "output"  # square: ComfyUI's rule, shape[0] == out
    with pytest.raises(ValueError, match="fits neither axis"):
        magnitude_axis((1, 5), (16, 24))


# -- foreign files: LyCORIS output-axis DoRA and DoHa -----------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
def test_file_adapter_applies_lycoris_output_axis_as_lycoris(target: str) -> None:
    base = _target(target)
    ref = RefLoCon("ref", copy.deepcopy(base), 1.0, 4, 2.0, weight_decompose=True)  # wd_on_out=True
    _randomize(ref)
    tensors = {k: v.detach() for k, v in ref.state_dict().items()}
    assert tensors["dora_scale"].shape[0] == base.weight.shape[0]
    ours = FileDeltaAdapter(copy.deepcopy(base), "lora", tensors)
    assert ours.dora_axis == "output"
    x = _input(base)
    ref.apply_to()
    ours.attach()
    try:
        with torch.no_grad():
            _assert_rel_close(ours.target(x), ref.org_module[0](x))
    finally:
        ref.restore()
        ours.detach()


@pytest.mark.parametrize("target", ["linear", "conv3x3_s2"])
def test_file_adapter_applies_doha_with_the_client_rule(target: str) -> None:
    base = _target(target)
    ref = RefLoha("ref", copy.deepcopy(base), 1.0, 3, 1.5, weight_decompose=True, wd_on_out=False)
    _randomize(ref)
    tensors = {k: v.detach() for k, v in ref.state_dict().items()}
    ours = FileDeltaAdapter(copy.deepcopy(base), "loha", tensors)
    assert ours.dora and ours.dora_axis == "input"
    W = base.weight.detach()
    delta = ref.get_weight(ref.shape).reshape(W.shape).detach()  # what LohaModule's forward adds
    for s in (1.0, 0.5):
        want = apply_dora_scale(W, delta, ref.dora_scale.detach(), s)
        _assert_rel_close(W + s * ours.delta_weight(), want)
