"""LoRAModule: kohya shapes/init/scale, hook forward == fused weight, multiplier, detach, dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lorakiln.networks.lora import LoRAModule, delta_weight, resolve_alpha


def _randomized(lora: LoRAModule, seed: int = 0) -> LoRAModule:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen))
    return lora


def _fused(layer: nn.Module, lora: LoRAModule) -> nn.Module:
    fused = copy.deepcopy(layer)
    with torch.no_grad():
        fused.weight += lora.delta_weight().to(fused.weight.dtype)
    return fused


def test_alpha_rule_and_scale() -> None:
    assert resolve_alpha(8, None) == 8.0
    assert resolve_alpha(8, 0) == 8.0
    assert resolve_alpha(8, 4) == 4.0
    lora = LoRAModule(nn.Linear(16, 12), dim=8, alpha=4)
    assert lora.scale == 0.5
    assert lora.alpha.dim() == 0 and float(lora.alpha) == 4.0
    with pytest.raises(ValueError):
        resolve_alpha(0, 1)


def test_linear_shapes_and_init() -> None:
    torch.manual_seed(0)
    lora = LoRAModule(nn.Linear(16, 12), dim=4, alpha=None)
    assert lora.lora_down.weight.shape == (4, 16)
    assert lora.lora_up.weight.shape == (12, 4)
    assert torch.count_nonzero(lora.lora_up.weight) == 0  # fresh network is a no-op
    assert lora.lora_down.weight.abs().sum() > 0
    bound = 1 / 16**0.5  # kaiming-uniform a=√5 on fan_in 16
    assert lora.lora_down.weight.abs().max() <= bound + 1e-6
    assert set(lora.state_dict()) == {"lora_down.weight", "lora_up.weight", "alpha"}


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(1, 1, 0), (3, 2, 1)], ids=["1x1", "3x3-stride2-pad1"]
)
def test_conv_shapes_and_hook_equals_fused(kernel: int, stride: int, padding: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, kernel, stride, padding)
    lora = _randomized(LoRAModule(conv, dim=3, alpha=1.5))
    assert lora.lora_down.weight.shape == (3, 6, kernel, kernel)
    assert lora.lora_up.weight.shape == (10, 3, 1, 1)
    assert lora.delta_weight().shape == conv.weight.shape
    x = torch.randn(2, 6, 9, 9)
    fused = _fused(conv, lora)
    lora.attach()
    torch.testing.assert_close(conv(x), fused(x), rtol=1e-5, atol=1e-5)


def test_linear_hook_equals_fused_multiplier_and_detach() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    base = linear(x)
    lora = _randomized(LoRAModule(linear, dim=4, alpha=2))
    fused = _fused(linear, lora)
    lora.attach()
    lora.attach()  # idempotent: one hook only
    torch.testing.assert_close(linear(x), fused(x), rtol=1e-5, atol=1e-5)
    # ΔW formula: scale · up @ down
    manual = (2 / 4) * lora.lora_up.weight @ lora.lora_down.weight
    torch.testing.assert_close(lora.delta_weight(), manual)
    lora.multiplier = 0.0
    assert torch.equal(linear(x), base)
    lora.multiplier = -0.5
    torch.testing.assert_close(linear(x) - base, -0.5 * (fused(x) - base), rtol=1e-5, atol=1e-5)
    lora.detach()
    lora.multiplier = 1.0
    assert torch.equal(linear(x), base)


def test_delta_weight_pure_function_matches_module() -> None:
    up, down = torch.randn(7, 3, 1, 1), torch.randn(3, 5, 3, 3)
    dw = delta_weight(up, down, 0.25, (7, 5, 3, 3))
    expected = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * 0.25
    torch.testing.assert_close(dw, expected)


def test_fp16_base_keeps_fp32_lora_params() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 12).half()
    lora = _randomized(LoRAModule(linear, dim=4, alpha=4))
    assert lora.lora_down.weight.dtype == torch.float32
    assert lora.lora_up.weight.dtype == torch.float32
    lora.attach()
    x = torch.randn(3, 16).half()
    out = linear(x)
    assert out.dtype == torch.float16
    ref = nn.functional.linear(x.float(), linear.weight.float() + lora.delta_weight(), linear.bias.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_dropout_only_in_training_and_grads_reach_lora() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 12).requires_grad_(False)
    lora = _randomized(LoRAModule(linear, dim=4, alpha=4, dropout=0.5))
    lora.attach()
    x = torch.randn(64, 16)
    lora.eval()
    assert torch.equal(linear(x), linear(x))
    lora.train()
    assert not torch.equal(linear(x), linear(x))
    linear(x).sum().backward()
    assert lora.lora_up.weight.grad is not None and lora.lora_down.weight.grad is not None
    assert linear.weight.grad is None


def test_hook_composes_with_activation_checkpointing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)).requires_grad_(False)
    loras = [_randomized(LoRAModule(model[i], dim=2, alpha=1), seed=i) for i in (0, 2)]
    for lora in loras:
        lora.attach()
    x = torch.randn(4, 8)

    def grads(use_checkpoint: bool) -> list[torch.Tensor]:
        for lora in loras:
            lora.zero_grad(set_to_none=True)
        out = checkpoint(model, x, use_reentrant=False) if use_checkpoint else model(x)
        out.square().sum().backward()
        return [p.grad.clone() for lora in loras for p in lora.parameters()]

    for plain, ckpt in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, ckpt)


def test_rejects_unsupported_targets() -> None:
    with pytest.raises(TypeError):
        LoRAModule(nn.LayerNorm(4), dim=2)
    with pytest.raises(ValueError):
        LoRAModule(nn.Conv2d(4, 4, 3, groups=2), dim=2)
