"""TIES and DARE maths (`lora_tools.merge.task`) on small hand-made tensors: trim, sign election,
disjoint mean; DARE's rescale keeps the expectation, is seeded, and at density 1 is the plain sum."""

from __future__ import annotations

import pytest
import torch

from lorakiln.lora_tools.merge import merge
from lorakiln.lora_tools.merge import task as task_merge
from lorakiln.lora_tools.merge.task import (
    combine,
    dare,
    dare_drop,
    dare_ties,
    disjoint_mean,
    elect_sign,
    module_generator,
    ties,
    trim,
)


def test_trim_keeps_exactly_the_largest_magnitudes() -> None:
    t = torch.tensor([[0.1, -0.9, 0.3], [-0.2, 0.05, 0.6]])
    assert torch.equal(trim(t, 0.5), torch.tensor([[0.0, -0.9, 0.3], [0.0, 0.0, 0.6]]))  # 3 of 6 kept
    assert torch.equal(trim(t, 1 / 6), torch.tensor([[0.0, -0.9, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(trim(t, 1.0), t)
    assert torch.count_nonzero(trim(torch.randn(40, 10), 0.2)) == 80  # round(0.2 · 400)
    with pytest.raises(ValueError, match="density"):
        trim(t, 0.0)


def test_sign_is_elected_by_total_magnitude_not_by_votes() -> None:
    a = torch.tensor([1.0, 2.0, -1.0, 0.0])
    b = torch.tensor([1.0, -1.0, -1.0, 0.0])
    c = torch.tensor([-3.0, 0.5, 2.0, 0.0])
    # entry 0: two vectors vote +, but -3 outweighs +2; entry 3: nothing anywhere → 0
    assert torch.equal(elect_sign([a, b, c]), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_disjoint_mean_averages_only_the_agreeing_nonzero_entries() -> None:
    a = torch.tensor([1.0, 2.0, 0.0, 4.0])
    b = torch.tensor([3.0, -1.0, 0.0, -4.0])
    c = torch.tensor([0.0, 4.0, 0.0, 0.0])
    sign = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # entry 0: (1 + 3)/2 (c is trimmed, not a vote for 0); entry 1: (2 + 4)/2 (b disagrees);
    # entry 2: nobody → 0; entry 3: an exact tie elects 0 → 0
    assert torch.equal(disjoint_mean([a, b, c], sign), torch.tensor([2.0, 3.0, 0.0, 0.0]))


def test_ties_end_to_end_on_three_task_vectors() -> None:
    t1 = torch.tensor([0.5, -0.1, 0.9, 0.2])
    t2 = torch.tensor([-0.7, 0.8, 0.05, -0.1])
    t3 = torch.tensor([0.1, 0.6, -1.2, 0.3])
    # trim to the top half of each: t1 → [.5, 0, .9, 0], t2 → [-.7, .8, 0, 0], t3 → [0, .6, -1.2, 0]
    # elect: sums [-.2, 1.4, -.3, 0] → [-, +, -, 0]; disjoint mean: [-.7, (.8 + .6)/2, -1.2, 0]
    expected = torch.tensor([-0.7, 0.7, -1.2, 0.0])
    torch.testing.assert_close(ties([t1, t2, t3], 0.5), expected)
    assert torch.equal(combine("ties", [t1, t2, t3], density=0.5), ties([t1, t2, t3], 0.5))
    # one vector alone: TIES is just its trim
    assert torch.equal(ties([t1], 0.5), trim(t1, 0.5))


def test_dare_at_density_one_is_the_plain_sum() -> None:
    deltas = [torch.randn(6, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    generators = [module_generator(0, i, "k") for i in range(3)]
    plain = combine("sum", deltas)
    assert torch.equal(dare(deltas, 1.0, generators), plain)
    assert torch.equal(combine("dare", deltas, density=1.0, generators=generators), plain)
    assert torch.equal(dare_ties(deltas, 1.0, generators), ties(deltas, 1.0))  # no trim: elect + mean only


def test_dare_drops_rescales_and_keeps_the_expectation() -> None:
    delta = torch.linspace(-1, 1, 64).reshape(8, 8)
    once = dare_drop(delta, 0.25, module_generator(3, 0, "k"))
    kept = once != 0
    torch.testing.assert_close(once[kept], delta[kept] / 0.25)  # survivors rescaled by 1/(1-p)
    assert 0.1 < kept.float().mean() < 0.4  # about a quarter kept
    mean = torch.stack([dare_drop(delta, 0.25, module_generator(s, 0, "k")) for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, delta, atol=0.08, rtol=0)  # E[drop-rescale(δ)] = δ
    assert (mean - delta).abs().mean() < 0.02


def test_dare_is_seeded_and_each_input_and_module_gets_its_own_mask() -> None:
    delta = torch.ones(32, 32)
    first = dare_drop(delta, 0.5, module_generator(7, 0, "lora_unet_a"))
    assert torch.equal(first, dare_drop(delta, 0.5, module_generator(7, 0, "lora_unet_a")))  # reproducible
    for other in (module_generator(8, 0, "lora_unet_a"), module_generator(7, 1, "lora_unet_a"),
                  module_generator(7, 0, "lora_unet_b")):
        assert not torch.equal(first, dare_drop(delta, 0.5, other))


def test_combine_errors_and_method_list() -> None:
    with pytest.raises(ValueError, match="unknown merge method"):
        combine("slerp", [torch.ones(2)])
    with pytest.raises(ValueError, match="needs a density"):
        combine("ties", [torch.ones(2)])
    with pytest.raises(ValueError, match="nothing"):
        combine("sum", [])
    assert merge.METHOD_CHOICES == task_merge.METHODS  # the torch-free parser lists the same methods
