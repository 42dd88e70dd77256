"""Optimizer registry and kohya ``optimizer_args`` parsing.

Every registered optimizer must build over per-part parameter groups, take steps on CPU, and
resume exactly: a state_dict saved after two steps and loaded into a fresh optimizer must produce
bit-identical parameters on the next step (what checkpoint/resume relies on).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging

import pytest
import torch

from lorakiln.errors import ConfigError
from lorakiln.training import optimizers
from lorakiln.training.optim_args import parse_optim_args
from lorakiln.training.optimizer_setup import same_lr_for_adaptive
from lorakiln.training.optimizers import build_optimizer, is_adaptive, lr_warning, optimizer_names


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 64x64 = 4096 weights: the smallest size bitsandbytes keeps in 8-bit (min_8bit_size=4096).
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))


def _groups(model: torch.nn.Module, lrs: tuple[float, float]) -> list[dict]:
    """Two parts with their own lr, the way the trainer passes U-Net and text-encoder groups."""
    return [{"params": list(model[0].parameters()), "lr": lrs[0]},
            {"params": list(model[2].parameters()), "lr": lrs[1]}]


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 64, generator=gen)
    target = torch.randn(8, 4, generator=gen)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), target).backward()
    opt.step()


def _lrs_for(name: str) -> tuple[float, float]:
    # Adaptive optimizers take lr as a multiplier (~1.0); Prodigy & co. need one value for all parts.
    return (1.0, 1.0) if is_adaptive(name) else (1e-3, 5e-4)


@pytest.mark.parametrize("name", optimizer_names())
def test_builds_steps_and_resumes_exactly(name: str) -> None:
    lrs = _lrs_for(name)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, _groups(model, lrs), lr=lrs[0])
    _step(model, opt, seed=1)
    _step(model, opt, seed=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    # Save as a checkpoint would (torch.save / torch.load with the safe weights_only default).
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf)

    resumed_model = copy.deepcopy(model)
    resumed = build_optimizer(name, _groups(resumed_model, lrs), lr=lrs[0])
    resumed.load_state_dict(saved)
    _step(model, opt, seed=3)
    _step(resumed_model, resumed, seed=3)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_per_group_lrs_preserved_and_caller_groups_untouched() -> None:
    model = _model()
    groups = _groups(model, (1e-4, 5e-5))
    snapshot = [dict(g) for g in groups]
    opt = build_optimizer("AdamW", groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 5e-5]
    assert groups == snapshot  # no initial_lr / defaults written into the caller's dicts
    opt = build_optimizer("adamw", [{"params": list(model.parameters())}], lr=2e-4)
    assert opt.param_groups[0]["lr"] == 2e-4  # a group without its own lr takes the default


def test_adamw_uses_fused_on_cpu_unless_overridden() -> None:
    model = _model()
    opt = build_optimizer("AdamW", _groups(model, (1e-4, 1e-4)), lr=1e-4)
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    opt = build_optimizer("AdamW", _groups(model, (1e-4, 1e-4)), lr=1e-4, args=["foreach=True"])
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    opt = build_optimizer("AdamW", _groups(model, (1e-4, 1e-4)), lr=1e-4, args=["foreach=False"])
    assert opt.defaults["foreach"] is False


def test_fused_adamw_matches_the_single_tensor_loop() -> None:
    """The fast path is the same AdamW: a few steps land where torch's reference loop lands."""
    results = []
    for args in ([], ["foreach=False"]):
        model = _model()
        opt = build_optimizer("AdamW", _groups(model, (1e-3, 1e-3)), lr=1e-3, args=args)
        for seed in range(3):
            _step(model, opt, seed=seed)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_adamw8bit_keeps_8bit_state_on_cpu() -> None:
    # bitsandbytes 0.50 ships CPU kernels for its blockwise 8-bit optimizers.
    model = _model()
    opt = build_optimizer("AdamW8bit", _groups(model, (1e-3, 1e-3)), lr=1e-3)
    _step(model, opt, seed=1)
    assert opt.state[model[0].weight]["state1"].dtype == torch.uint8


def test_8bit_unavailable_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizers, "_bnb_8bit_problem", lambda device: f"no kernel for '{device}'")
    with pytest.raises(ConfigError, match=r"Lion8bit.*no kernel for 'cpu'.*\"Lion\""):
        build_optimizer("Lion8bit", _groups(_model(), (1e-4, 1e-4)), lr=1e-4)
    with pytest.raises(ConfigError, match=r"\"AdamW\" instead"):
        build_optimizer("AdamW8bit", _groups(_model(), (1e-4, 1e-4)), lr=1e-4)


def test_adafactor_relative_step_ignores_lrs_like_kohya(caplog: pytest.LogCaptureFixture) -> None:
    args = "relative_step=True scale_parameter=True warmup_init=False"  # the kohya guide's line
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer("AdaFactor", _groups(_model(), (1.0, 0.5)), lr=1.0, args=args)
    assert [g["lr"] for g in opt.param_groups] == [None, None]
    assert "ignored" in caplog.text
    fixed = build_optimizer("Adafactor", _groups(_model(), (1e-3, 5e-4)), lr=1e-3, args=["relative_step=False"])
    assert [g["lr"] for g in fixed.param_groups] == [1e-3, 5e-4]


def test_dadaptation_turns_part_lrs_into_layer_scale() -> None:
    model = _model()
    opt = build_optimizer("DAdaptation", _groups(model, (1.0, 0.5)), lr=1.0, args=["decouple=True"])
    assert type(opt).__name__ == "DAdaptAdam"
    assert [(g["lr"], g["layer_scale"]) for g in opt.param_groups] == [(1.0, 1.0), (1.0, 0.5)]
    _step(model, opt, seed=1)  # DAdaptAdam would raise here on unequal group lrs


@pytest.mark.parametrize("name", ["prodigy", "DAdaptLion", "DAdapt_SGD", "DAdaptAdan", "dadaptadagrad"])
def test_one_lr_optimizers_get_one_lr_for_every_part_but_a_frozen_part_stays_frozen(name: str) -> None:
    """Unequal part lrs never reach an optimizer that learns one step size (Prodigy asserts at
    its first step, DAdaptAdan/AdaGrad would silently use the first group's): the trainer's LR
    policy gives every part `learning_rate`, says so, and leaves a part at 0 frozen."""
    notes: list[str] = []
    model = _model()
    groups = _groups(model, (1.0, 0.5))
    same_lr_for_adaptive(name, 1.0, groups, notes.append)
    assert [g["lr"] for g in groups] == [1.0, 1.0]
    assert "one initial learning rate" in notes[0] and "[0.5, 1.0]" in notes[0]
    _step(model, build_optimizer(name, groups, lr=1.0), seed=1)
    model = _model()
    frozen = _groups(model, (1.0, 0.0))
    same_lr_for_adaptive(name, 1.0, frozen, notes.append)
    assert [g["lr"] for g in frozen] == [1.0, 0.0] and len(notes) == 1
    _step(model, build_optimizer(name, frozen, lr=1.0), seed=1)
    other = _groups(_model(), (1.0, 0.5))
    same_lr_for_adaptive("DAdaptAdam", 1.0, other, notes.append)  # keeps ratios as layer_scale
    assert [g["lr"] for g in other] == [1.0, 0.5]


def test_prodigy_accepts_the_diffusers_guide_settings() -> None:
    args = ["safeguard_warmup=True", "use_bias_correction=True", "betas=0.9,0.99", "beta3=None",
            "d_coef=2", "decouple=True"]
    opt = build_optimizer("Prodigy", _groups(_model(), (1.0, 1.0)), lr=1.0, args=args, weight_decay=0.01)
    group = opt.param_groups[0]
    assert group["safeguard_warmup"] is True and group["use_bias_correction"] is True
    assert group["betas"] == (0.9, 0.99) and group["d_coef"] == 2 and group["weight_decay"] == 0.01


def test_top_level_betas_and_weight_decay() -> None:
    opt = build_optimizer("AdamW", _groups(_model(), (1e-4, 1e-4)), lr=1e-4, betas=[0.9, 0.99], weight_decay=0.1)
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["weight_decay"] == 0.1
    same = build_optimizer("AdamW", _groups(_model(), (1e-4, 1e-4)), lr=1e-4, args=["weight_decay=0.1"],
                           weight_decay=0.1)
    assert same.defaults["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match="'weight_decay' is set twice"):
        build_optimizer("AdamW", _groups(_model(), (1e-4, 1e-4)), lr=1e-4, args=["weight_decay=0.2"],
                        weight_decay=0.1)


@pytest.mark.parametrize("spelling, cls", [("adamw", "AdamW"), ("AdamW_8bit", "AdamW8bit"),
                                           ("DAdaptation", "DAdaptAdam"), ("sgd-nesterov", "SGD")])
def test_names_are_case_and_separator_insensitive(spelling: str, cls: str) -> None:
    assert type(build_optimizer(spelling, _groups(_model(), (1.0, 1.0)), lr=1.0)).__name__ == cls


def test_sgd_nesterov_has_kohya_defaults() -> None:
    opt = build_optimizer("SGDNesterov", _groups(_model(), (1e-3, 1e-3)), lr=1e-3)
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_unknown_optimizer_suggests_nearest_and_lists_all() -> None:
    with pytest.raises(ConfigError) as err:
        build_optimizer("AdamW9bit", _groups(_model(), (1.0, 1.0)), lr=1.0)
    msg = str(err.value)
    assert "'AdamW9bit'" in msg and "Did you mean 'AdamW8bit'" in msg
    assert all(n in msg for n in optimizer_names())


def test_unknown_argument_is_named_with_accepted_list() -> None:
    with pytest.raises(ConfigError) as err:
        build_optimizer("Prodigy", _groups(_model(), (1.0, 1.0)), lr=1.0, args=["decoupled=True"])
    msg = str(err.value)
    assert "'decoupled'" in msg and "Did you mean 'decouple'" in msg and "safeguard_warmup" in msg


@pytest.mark.parametrize("args, match", [
    (["lr=1e-3"], "learning_rate"),
    (["betas=0.9,1.5"], r"AdamW' rejected its settings.*beta"),  # torch's own range check
])
def test_bad_values_are_config_errors(args: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_optimizer("AdamW", _groups(_model(), (1e-4, 1e-4)), lr=1e-4, args=args)


def test_empty_parameters_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="No trainable parameters"):
        build_optimizer("AdamW", [{"params": []}], lr=1e-4)

    def missing() -> type:
        raise ImportError("No module named 'lion_pytorch'")

    spec = optimizers._REGISTRY["lion"]
    monkeypatch.setitem(optimizers._REGISTRY, "lion", dataclasses.replace(spec, load=missing))
    with pytest.raises(ConfigError, match="pip install lion-pytorch"):
        build_optimizer("Lion", _groups(_model(), (1e-4, 1e-4)), lr=1e-4)


def test_is_adaptive_and_lr_warning() -> None:
    assert is_adaptive("Prodigy") and is_adaptive("dadaptation") and is_adaptive("Adafactor")
    assert not is_adaptive("Adafactor", ["relative_step=False"])
    assert not is_adaptive("AdamW8bit")
    assert "1.0" in (lr_warning("Prodigy", [1e-4, 1e-4]) or "")
    assert lr_warning("Prodigy", [1.0, 1.0]) is None
    assert lr_warning("AdamW", [1e-4]) is None
    assert lr_warning("Adafactor", [1e-4]) is None  # relative_step: lr unused, nothing to fix


# --- kohya optimizer_args parsing ---------------------------------------------------------------


def test_parse_list_values_are_typed() -> None:
    parsed = parse_optim_args(["decouple=True", "weight_decay=0.05", "betas=0.9,0.99", "d0=1e-6",
                               "slice_p=11", "beta3=None", "growth_rate=inf", "use_triton=false",
                               "mode='fast'", " eps = -1e-8 "])
    assert parsed == {"decouple": True, "weight_decay": 0.05, "betas": (0.9, 0.99), "d0": 1e-6,
                      "slice_p": 11, "beta3": None, "growth_rate": float("inf"), "use_triton": False,
                      "mode": "fast", "eps": -1e-8}
    assert isinstance(parsed["slice_p"], int) and isinstance(parsed["weight_decay"], float)


def test_parse_gui_string_and_dict() -> None:
    assert parse_optim_args("relative_step=True scale_parameter=True  betas=0.9, 0.99") == {
        "relative_step": True, "scale_parameter": True, "betas": (0.9, 0.99)}
    assert parse_optim_args({"betas": [0.9, 0.99], "decouple": True}) == {"betas": (0.9, 0.99), "decouple": True}
    assert parse_optim_args(None) == {} and parse_optim_args([]) == {} and parse_optim_args("") == {}


@pytest.mark.parametrize("args, named", [
    (["decouple"], "'decouple'"),
    (["=1"], "'=1'"),
    (["1x=2"], "'1x=2'"),
    (["eps=1e-8", "eps=1e-6"], "'eps'"),
    (["betas=0.9,,0.99"], "'betas=0.9,,0.99'"),
    (["weight_decay=abc"], "'weight_decay=abc'"),
    (["decouple="], "'decouple='"),
])
def test_parse_errors_name_the_bad_item(args: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_optim_args(args)
    assert named in str(err.value)
