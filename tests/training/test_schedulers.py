"""Scheduler registry: lr curves against their formulas, exact resume, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from lorakiln.errors import ConfigError
from lorakiln.training.optimizers import build_optimizer
from lorakiln.training.schedulers import build_scheduler, resolve_warmup_steps, scheduler_names


def _opt(lrs: tuple[float, ...] = (1.0, 0.5)) -> torch.optim.Optimizer:
    """Plain SGD over one parameter per group: schedulers only touch group lrs."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _curve(sched, opt: torch.optim.Optimizer, steps: int, group: int = 0) -> list[float]:
    """lr of ``group`` used at steps 0..steps (inclusive), stepping like the trainer does."""
    out = [opt.param_groups[group]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[group]["lr"])
    return out


def _build(name: str, opt: torch.optim.Optimizer, **kw):
    kw.setdefault("num_training_steps", 10)
    return build_scheduler(name, opt, **kw)


def test_constant_and_constant_with_warmup() -> None:
    opt = _opt()
    assert _curve(_build("constant", opt), opt, 5) == [1.0] * 6
    opt = _opt()
    lrs = _curve(_build("constant_with_warmup", opt, num_warmup_steps=4), opt, 6)
    assert lrs == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1])


def test_linear_with_warmup() -> None:
    opt = _opt()
    lrs = _curve(_build("linear", opt, num_warmup_steps=2), opt, 10)
    expected = [t / 2 if t < 2 else (10 - t) / 8 for t in range(11)]
    assert lrs == pytest.approx(expected)


def test_cosine_is_one_half_wave() -> None:
    opt = _opt()
    lrs = _curve(_build("cosine", opt, num_cycles=3), opt, 10)  # num_cycles only for restarts
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(11)])


def test_cosine_with_restarts_cycles() -> None:
    opt = _opt()
    lrs = _curve(_build("cosine_with_restarts", opt, num_training_steps=12, num_cycles=3), opt, 11)
    expected = [0.5 * (1 + math.cos(math.pi * ((3 * t / 12) % 1.0))) for t in range(12)]
    assert lrs == pytest.approx(expected)
    assert lrs[4] == lrs[8] == pytest.approx(1.0)  # hard restarts every 4 steps
    assert lrs[2] == pytest.approx(0.5) and lrs[3] < lrs[2]


def test_polynomial_decays_to_lr_end() -> None:
    opt = _opt()
    sched = _build("polynomial", opt, power=2.0)
    lrs = _curve(sched, opt, 12)
    expected = [(1 - 1e-7) * (1 - t / 10) ** 2 + 1e-7 for t in range(11)]
    assert lrs[:11] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[10] == pytest.approx(1e-7) and lrs[12] == pytest.approx(1e-7)  # holds after the end
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5e-7)  # other groups keep their ratio
    opt = _opt()
    lrs = _curve(_build("polynomial", opt, args=["lr_end=1e-3"]), opt, 10)
    assert lrs[10] == pytest.approx(1e-3) and lrs[5] == pytest.approx((1 - 1e-3) * 0.5 + 1e-3)


def test_warmup_ratio_and_steps() -> None:
    opt = _opt()
    lrs = _curve(_build("constant_with_warmup", opt, num_training_steps=20, num_warmup_steps=0.25), opt, 6)
    assert lrs[4] == pytest.approx(0.8) and lrs[5] == pytest.approx(1.0)
    assert resolve_warmup_steps(0.1, 15) == 1  # kohya truncates the fraction
    assert resolve_warmup_steps(3, 10) == 3 and resolve_warmup_steps(3.0, 10) == 3
    for bad in (-1, 2.5, 11, True):
        with pytest.raises(ConfigError, match="lr_warmup_steps"):
            resolve_warmup_steps(bad, 10)


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine",
                                  "cosine_with_restarts", "polynomial"])
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    kw = {"num_training_steps": 20, "num_warmup_steps": 0 if name == "constant" else 3, "num_cycles": 2}
    opt = _opt()
    sched = build_scheduler(name, opt, **kw)
    _curve(sched, opt, 7)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    reference = _curve(sched, opt, 9)

    fresh_opt = _opt()
    fresh = build_scheduler(name, fresh_opt, **kw)
    fresh_opt.load_state_dict(opt_state)
    fresh.load_state_dict(sched_state)
    assert _curve(fresh, fresh_opt, 9) == reference  # exact, not approx
    assert fresh.get_last_lr() == sched.get_last_lr()  # every group, the text encoder's too


def test_adafactor_scheduler_needs_adafactor() -> None:
    with pytest.raises(ConfigError, match=r"only works with optimizer_type = \"Adafactor\".*SGD"):
        _build("adafactor", _opt())


def test_adafactor_scheduler_reports_adafactor_lr() -> None:
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer("Adafactor", [{"params": list(model.parameters())}], lr=1.0)
    sched = _build("adafactor:1e-3", opt)
    assert sched.get_last_lr() == [1e-3]  # kohya's "adafactor:<lr>": logged before the first step
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched.step()
    # relative step size: min(1e-2, 1/sqrt(1)) * max(eps2, RMS(param))
    assert 0 < sched.get_last_lr()[0] <= 1e-2
    with pytest.raises(ConfigError, match="lr_scheduler = \"adafactor\""):
        _build("cosine", opt)
    with pytest.raises(ConfigError, match="warmup_init"):
        _build("adafactor", opt, num_warmup_steps=2)


def test_adafactor_without_relative_step_takes_ordinary_schedules() -> None:
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer("Adafactor", [{"params": list(model.parameters())}], lr=1e-3,
                          args=["relative_step=False"])
    assert _curve(_build("constant_with_warmup", opt, num_warmup_steps=2), opt, 3) == pytest.approx(
        [0, 5e-4, 1e-3, 1e-3])


def test_errors_name_the_bad_thing() -> None:
    with pytest.raises(ConfigError) as err:
        _build("cosine_restarts", _opt())
    assert "Did you mean 'cosine_with_restarts'" in str(err.value)
    assert all(n in str(err.value) for n in scheduler_names())
    with pytest.raises(ConfigError, match="'constant' has no warmup"):
        _build("constant", _opt(), num_warmup_steps=5)
    with pytest.raises(ConfigError, match=r"'polynomial' does not accept argument 'lr_min'.*lr_end"):
        _build("polynomial", _opt(), args=["lr_min=0"])
    with pytest.raises(ConfigError, match=r"lr_end \(2\.0\) must be smaller"):
        _build("polynomial", _opt(), args={"lr_end": 2.0})
    with pytest.raises(ConfigError, match="num_training_steps"):
        _build("linear", _opt(), num_training_steps=0)
    with pytest.raises(ConfigError, match="num_cycles"):
        _build("cosine_with_restarts", _opt(), num_cycles=0)


def test_names_are_normalised() -> None:
    opt = _opt()
    lrs = _curve(_build("Cosine-With-Restarts", opt, num_cycles=2), opt, 5)
    assert lrs[5] == pytest.approx(1.0)
