"""Learning-rate scheduler registry: a kohya ``lr_scheduler`` name → a torch ``LRScheduler``.

The curves are diffusers' (``diffusers.optimization``), which is what kohya sd-scripts uses too, so
a run here and a kohya run with the same settings see the same learning rates. We call diffusers'
per-schedule functions rather than ``get_scheduler`` because ``get_scheduler`` cannot pass
``lr_end`` (polynomial) or ``num_cycles`` for ``cosine``; ``args`` exposes those.

Every scheduler returned is a ``torch.optim.lr_scheduler.LambdaLR`` whose ``state_dict()`` holds
the step counter and base lrs; loading it into a freshly built scheduler with the same settings
continues the curve exactly (the lambdas themselves are rebuilt from the config, not pickled).

Warmup (``num_warmup_steps``) is a step count, or — kohya's convention for ``lr_warmup_steps`` —
a float in (0, 1) meaning that fraction of ``num_training_steps``, truncated to whole steps.

The names themselves are ``config.optimizer_names`` (torch-free, read by config checks too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lorakiln.config.optimizer_names import normalise_scheduler, scheduler_names, validate_scheduler_name
from lorakiln.errors import ConfigError
from lorakiln.training.optim_args import OptimArgs, accepted_args, check_known_args, parse_optim_args

__all__ = ["build_scheduler", "resolve_warmup_steps", "scheduler_names", "validate_scheduler_name"]

# Arguments build_scheduler fills itself; the user cannot pass them through `args`.
_RESERVED = {"optimizer", "last_epoch", "num_warmup_steps", "num_training_steps"}


def resolve_warmup_steps(num_warmup_steps: float, num_training_steps: int) -> int:
    """Turn a warmup given as steps or as a ratio (0 < x < 1, kohya) into whole steps."""
    w = num_warmup_steps
    if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
        raise ConfigError(f"lr_warmup_steps must be a number of steps >= 0 or a fraction below 1, got {w!r}.")
    if isinstance(w, float) and 0 < w < 1:
        steps = int(w * num_training_steps)  # kohya truncates: int(ratio * max_train_steps)
    elif float(w).is_integer():
        steps = int(w)
    else:
        raise ConfigError(f"lr_warmup_steps={w} is neither whole steps nor a fraction below 1.")
    if steps > num_training_steps:
        raise ConfigError(f"lr_warmup_steps ({steps}) is longer than the whole run ({num_training_steps} steps).")
    return steps


def _adafactor_relative(optimizer: torch.optim.Optimizer) -> bool | None:
    """None if ``optimizer`` is not transformers' Adafactor, else whether it uses relative steps."""
    if "transformers.optimization" not in sys.modules:  # cannot be an Adafactor; skip the import
        return None
    from transformers.optimization import Adafactor

    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's AcceleratedOptimizer
    if not isinstance(inner, Adafactor):
        return None
    return any(g.get("relative_step", False) for g in inner.param_groups)


def _build_adafactor(optimizer: torch.optim.Optimizer, warmup: int, initial_lr: float | None,
                     extra: dict[str, Any]) -> LRScheduler:
    """transformers' AdafactorSchedule: a proxy reporting the lr Adafactor computes itself."""
    if _adafactor_relative(optimizer) is None:
        raise ConfigError(
            f"lr_scheduler 'adafactor' only works with optimizer_type = \"Adafactor\" (got "
            f"{type(optimizer).__name__}); it reports Adafactor's own step size. Use e.g. 'constant'."
        )
    if warmup:
        raise ConfigError("lr_scheduler 'adafactor' has no warmup; set lr_warmup_steps = 0 and use "
                          "optimizer_args 'warmup_init=True' instead.")
    check_known_args("lr_scheduler 'adafactor'", extra, ["initial_lr"])
    from transformers.optimization import AdafactorSchedule

    # initial_lr is only what gets logged before the first step (kohya passes learning_rate).
    lr0 = extra.get("initial_lr", initial_lr if initial_lr is not None else 0.0)
    return AdafactorSchedule(optimizer, initial_lr=lr0)


def _build_diffusers(key: str, optimizer: torch.optim.Optimizer, warmup: int, total: int,
                     num_cycles: int, power: float, extra: dict[str, Any]) -> LRScheduler:
    from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    fn: Callable[..., LRScheduler] = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(key)]
    check_known_args(f"lr_scheduler '{key}'", extra, accepted_args(fn, _RESERVED))
    if key == "constant":
        if warmup:
            # kohya raises here too: 'constant' silently ignoring the warmup surprises users.
            raise ConfigError("lr_scheduler 'constant' has no warmup; use 'constant_with_warmup' or set "
                              "lr_warmup_steps = 0.")
        kwargs: dict[str, Any] = {}
    elif key == "constant_with_warmup":
        kwargs = {"num_warmup_steps": warmup}
    else:
        kwargs = {"num_warmup_steps": warmup, "num_training_steps": total}
    if key == "cosine_with_restarts":
        kwargs["num_cycles"] = num_cycles  # hard restarts: lr jumps back to max num_cycles times
    if key == "polynomial":
        kwargs["power"] = power  # decays to lr_end (1e-7 by default, as in kohya/diffusers)
    # "cosine" keeps diffusers' num_cycles=0.5 (one half-wave from max to 0) unless given in args.
    kwargs.update(extra)
    return fn(optimizer, **kwargs)


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    num_warmup_steps: float = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    args: OptimArgs = None,
) -> LRScheduler:
    """Build scheduler ``name`` for ``optimizer`` over ``num_training_steps`` optimizer steps.

    ``num_cycles`` applies to ``cosine_with_restarts`` and ``power`` to ``polynomial``; ``args``
    (kohya ``lr_scheduler_args``) passes the remaining diffusers arguments, e.g. ``lr_end=1e-6``
    or ``num_cycles=0.5`` for ``cosine``, and ``initial_lr`` for ``adafactor``.

    Polynomial, like diffusers, decays from ``optimizer.defaults["lr"]`` to ``lr_end`` as a factor:
    a group with its own lr ends at ``group_lr * lr_end / defaults_lr``.
    """
    key, initial_lr = normalise_scheduler(name)
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise ConfigError(f"num_training_steps must be a positive integer, got {num_training_steps!r}.")
    if key == "cosine_with_restarts" and (not isinstance(num_cycles, int) or num_cycles < 1):
        raise ConfigError(f"lr_scheduler_num_cycles must be an integer >= 1, got {num_cycles!r}.")
    warmup = resolve_warmup_steps(num_warmup_steps, num_training_steps)
    extra = parse_optim_args(args)
    if key == "adafactor":
        return _build_adafactor(optimizer, warmup, initial_lr, extra)
    if _adafactor_relative(optimizer):
        raise ConfigError(
            f"Adafactor with relative_step=True computes its own step size, so lr_scheduler '{key}' has "
            "nothing to scale. Use lr_scheduler = \"adafactor\", or optimizer_args "
            "'relative_step=False' with a learning rate (kohya suggests constant_with_warmup)."
        )
    try:
        return _build_diffusers(key, optimizer, warmup, num_training_steps, num_cycles, power, extra)
    except (ValueError, TypeError) as exc:  # e.g. "lr_end (1e-07) must be smaller than initial lr"
        raise ConfigError(f"lr_scheduler '{key}' rejected its settings: {exc}") from exc
