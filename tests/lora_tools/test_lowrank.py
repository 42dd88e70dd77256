"""The SVD core shared by resize, extract and merges."""

from __future__ import annotations

import pytest
import torch

from lorakiln.lora_tools.lowrank.lowrank import choose_rank, factorize


def _low_rank(out: int, inn: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, rank, generator=g) @ torch.randn(rank, inn, generator=g)


def test_full_rank_is_lossless_linear_and_conv() -> None:
    delta = torch.randn(12, 7, generator=torch.Generator().manual_seed(1))
    lr = factorize(delta, "fixed", 7)
    assert lr.energy == pytest.approx(1.0)
    torch.testing.assert_close(lr.delta(), delta, atol=1e-5, rtol=1e-5)
    conv = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    lr = factorize(conv, "fixed", 36, alpha=8.0)
    assert lr.up.shape == (6, 6, 1, 1) and lr.down.shape == (6, 4, 3, 3) and lr.alpha == 8.0
    torch.testing.assert_close(lr.delta(), conv, atol=1e-5, rtol=1e-5)


def test_known_low_rank_delta_is_recovered_at_its_rank() -> None:
    delta = _low_rank(20, 16, 3)
    lr = factorize(delta, "sv_ratio", 1e6)
    assert lr.rank == 3
    torch.testing.assert_close(lr.delta(), delta, atol=1e-4, rtol=1e-4)


def test_truncation_keeps_the_reported_energy() -> None:
    delta = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    lr = factorize(delta, "fixed", 4)
    s = torch.linalg.svdvals(delta.double())
    assert lr.energy == pytest.approx(float(s[:4].pow(2).sum() / s.pow(2).sum()))
    residual = (delta - lr.delta()).pow(2).sum() / delta.pow(2).sum()
    assert float(residual) == pytest.approx(1 - lr.energy, abs=1e-5)


def test_dynamic_methods() -> None:
    s = torch.tensor([8.0, 4.0, 2.0, 1.0])
    assert choose_rank(s, "sv_ratio", 2) == 1  # σ > 4 (kohya: strictly above σ_max / ratio)
    assert choose_rank(s, "sv_ratio", 2.5) == 2
    assert choose_rank(s, "sv_ratio", 9) == 4
    assert choose_rank(s, "sv_cumulative", 12 / 15) == 2  # (8+4)/15
    assert choose_rank(s, "sv_cumulative", 0.81) == 3
    assert choose_rank(s, "sv_fro", (80 / 85) ** 0.5) == 2  # (64+16)/85
    assert choose_rank(s, "sv_fro", 1.0) == 4
    assert choose_rank(s, "sv_ratio", 9, max_rank=3) == 3
    assert choose_rank(torch.zeros(3), "sv_fro", 0.9) == 1
    with pytest.raises(ValueError, match="sv_fro target"):
        choose_rank(s, "sv_fro", 1.5)
    with pytest.raises(ValueError, match="valid: fixed"):
        choose_rank(s, "svd", 1)  # type: ignore[arg-type]
