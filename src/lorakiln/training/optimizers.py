"""Optimizer registry: a kohya optimizer name → a constructed ``torch.optim.Optimizer``.

Names and extra-argument conventions follow kohya sd-scripts (``optimizer_type`` and
``optimizer_args = ["decouple=True", ...]``) so settings copied from guides work unchanged.
The names, aliases and spelling rules are ``config.optimizer_names`` (torch-free, so a config can
be checked without torch); this module maps each of those names to its constructor.

Every third-party optimizer is imported lazily inside its factory: importing this module costs
nothing, and a missing optional package only matters to the run that asks for it.

Arguments are checked against the constructor signature (``optim_args.check_known_args``).
Per-part learning rates meet adaptive optimizers' constraints before the optimizer is built:
DAdaptAdam gets ``layer_scale`` here; the optimizers that take one lr for every group get it from
the trainer's policy (``training.optimizer_setup.same_lr_for_adaptive``).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lorakiln.config.optimizer_names import OPTIMIZERS, optimizer_names, validate_optimizer_name
from lorakiln.errors import ConfigError
from lorakiln.models.lean_imports import allow_bitsandbytes
from lorakiln.training.optim_args import OptimArgs, accepted_args, check_known_args, parse_optim_args

__all__ = ["build_optimizer", "is_adaptive", "lr_warning", "optimizer_names", "validate_optimizer_name"]

logger = logging.getLogger(__name__)

Prepare = Callable[[str, list[dict[str, Any]], dict[str, Any]], None]


@dataclass(frozen=True)
class _Spec:
    """One registry entry. ``load`` imports the class lazily; ``prepare`` adjusts groups/kwargs."""

    name: str
    load: Callable[[], type[torch.optim.Optimizer]]
    package: str
    #: kohya's defaults, applied before the user's arguments (which win).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    prepare: Prepare | None = None
    eight_bit: bool = False
    #: Learns its own step size, so ``lr`` is a multiplier that should be ~1.0.
    adaptive: bool = False


def _params(groups: list[dict[str, Any]]) -> Iterable[torch.Tensor]:
    return (p for g in groups for p in g["params"])


def _prepare_torch_fast_path(name: str, groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> None:
    """Pick torch's fastest implementation unless the user chose one.

    ``fused`` (one kernel per parameter, no Python loop) exists for floating-point parameters on
    the devices torch lists (CUDA, and CPU since torch 2.4). ``foreach`` is the fallback; on CPU
    it reads every parameter's step counter back with ``.item()`` (two per parameter and step:
    512 of the 7,800 ops of a micro-model step in the profile), which fused does not. Measured on
    the peer bench's micro model (128 LoRA modules, 2 CPU cores, interleaved): fused 2–4 % faster
    per step. They cannot both be ``True``.
    """
    if "foreach" in kwargs or "fused" in kwargs:
        return
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    fused_devices = set(_get_fused_kernels_supported_devices())
    params = list(_params(groups))
    if params and all(p.is_floating_point() and p.device.type in fused_devices for p in params):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True


def _prepare_adafactor(name: str, groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> None:
    """Mirror kohya's Adafactor handling.

    With ``relative_step=True`` (Shazeer & Stern 2018, "Adafactor", §8) the step size is
    ``max(eps2, RMS(param)) * min(1e-2, 1/sqrt(t))``: no learning rate enters it, and transformers
    refuses an explicit ``lr``. kohya therefore sets lr to None, drops per-group lrs with a warning
    and switches to the ``adafactor`` scheduler (we require the user to choose that scheduler,
    see ``schedulers.py``, instead of switching silently).
    """
    kwargs.setdefault("relative_step", True)  # kohya's and transformers' default
    if not kwargs["relative_step"]:
        return
    kwargs["lr"] = None
    dropped = [g.pop("lr") for g in groups if "lr" in g]
    if dropped:
        logger.warning(
            "Adafactor with relative_step=True computes its own step size; the per-part learning "
            "rates %s are ignored (kohya does the same).", sorted(set(dropped))
        )


def _group_lrs(groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[float]:
    return [g.get("lr", kwargs["lr"]) for g in groups]


def _prepare_layer_scale(name: str, groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> None:
    """DAdaptAdam ≥ 3 raises at the first step if group lrs differ (0 excepted) because it learns
    one step size d for all groups; it offers ``layer_scale`` instead. We turn the per-part lrs
    (e.g. U-Net 1.0, text encoder 0.5, as kohya guides advise) into the same max lr plus a
    ``layer_scale`` of lr/max, which scales that group's update exactly as the lr ratio intends.
    """
    lrs = _group_lrs(groups, kwargs)
    top = max(lrs)
    if all(lr in (top, 0.0) for lr in lrs):
        return
    for group, lr in zip(groups, lrs, strict=True):
        if lr > 0:
            group["lr"], group["layer_scale"] = top, lr / top
    logger.info("%s: per-part learning rates %s applied as layer_scale relative to %s.", name, lrs, top)


def _attr(module: str, name: str) -> Callable[[], type[torch.optim.Optimizer]]:
    def load() -> type[torch.optim.Optimizer]:
        if module.startswith("bitsandbytes"):
            allow_bitsandbytes()  # the CLI hides it from diffusers and peft (models/lean_imports.py)
        return getattr(importlib.import_module(module), name)

    return load


#: Lower-cased canonical name → spec (canonical names have no ``_``/``-``/spaces to fold).
_REGISTRY: dict[str, _Spec] = {}


def _register(spec: _Spec) -> None:
    """Add ``spec`` under its canonical name, which must be one of ``config.optimizer_names``."""
    if spec.name not in OPTIMIZERS or spec.name.lower() in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is unknown to config.optimizer_names or registered twice")
    _REGISTRY[spec.name.lower()] = spec


_register(_Spec("AdamW", _attr("torch.optim", "AdamW"), "torch", prepare=_prepare_torch_fast_path))
_register(_Spec("AdamW8bit", _attr("bitsandbytes.optim", "AdamW8bit"), "bitsandbytes", eight_bit=True))
_register(_Spec("Lion", _attr("lion_pytorch", "Lion"), "lion-pytorch"))
_register(_Spec("Lion8bit", _attr("bitsandbytes.optim", "Lion8bit"), "bitsandbytes", eight_bit=True))
_register(_Spec("SGD", _attr("torch.optim", "SGD"), "torch", prepare=_prepare_torch_fast_path))
# kohya: SGDNesterov forces nesterov=True and defaults momentum to 0.9.
_register(_Spec("SGDNesterov", _attr("torch.optim", "SGD"), "torch",
                defaults={"momentum": 0.9, "nesterov": True}, prepare=_prepare_torch_fast_path))
_register(_Spec("Adafactor", _attr("transformers.optimization", "Adafactor"), "transformers",
                defaults={"scale_parameter": True, "warmup_init": False}, prepare=_prepare_adafactor,
                adaptive=True))
# D-Adaptation (Defazio & Mishchenko 2023) estimates the distance to the solution `d` and uses
# d·lr as the step. kohya maps "DAdaptation" to the experimental DAdaptAdamPreprint; we map it to
# the maintained DAdaptAdam. Note: `decouple=True` means AdamW-style decoupled weight decay — it
# only matters when weight_decay > 0; per-part learning rates become `layer_scale` (see above).
_register(_Spec("DAdaptAdam", _attr("dadaptation", "DAdaptAdam"), "dadaptation", prepare=_prepare_layer_scale,
                adaptive=True))
for _name in ("DAdaptLion", "DAdaptSGD", "DAdaptAdan", "DAdaptAdaGrad"):
    _register(_Spec(_name, _attr("dadaptation", _name), "dadaptation", adaptive=True))
# Prodigy (Mishchenko & Defazio 2023) is D-Adaptation with a faster-growing d estimate. The
# diffusers LoRA guide recommends lr=1.0, safeguard_warmup=True, use_bias_correction=True,
# betas=0.9,0.99, weight_decay=0.01 for diffusion LoRAs.
_register(_Spec("Prodigy", _attr("prodigyopt", "Prodigy"), "prodigyopt", adaptive=True))
if len(_REGISTRY) != len(OPTIMIZERS):
    raise ValueError(f"no constructor for {sorted(n for n in OPTIMIZERS if n.lower() not in _REGISTRY)}")


def _lookup(name: str) -> _Spec:
    """The spec of `name` in any accepted spelling; an unknown name is `validate_optimizer_name`'s error."""
    return _REGISTRY[validate_optimizer_name(name).lower()]


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU", "mps": "MPS", "hpu": "HPU"}


@functools.cache
def _bnb_8bit_problem(device_type: str) -> str | None:
    """Why bitsandbytes cannot run 8-bit optimizers on ``device_type``, or None if it can.

    Cheap: asks torch's operator dispatcher whether bitsandbytes registered its blockwise 8-bit
    update kernel for this device, instead of running a probe step. bitsandbytes ≥ 0.48 ships
    CPU kernels (checked on 0.50.2: AdamW8bit/Lion8bit keep uint8 state on CPU); older releases
    and some accelerators only have CUDA kernels.
    """
    try:
        allow_bitsandbytes()
        import bitsandbytes
    except Exception as exc:  # ImportError, or a native-library failure raised at import
        return f"bitsandbytes could not be imported ({type(exc).__name__}: {exc})"
    op = "bitsandbytes::optimizer_update_8bit_blockwise"
    try:
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        ok = has(op, _DISPATCH_KEYS.get(device_type, device_type.upper())) or has(
            op, "CompositeExplicitAutograd"
        )
    except RuntimeError:  # operator not registered: a bitsandbytes without device-agnostic kernels
        ok = device_type == "cuda"
    except AttributeError:  # private dispatcher API moved: let bitsandbytes report problems itself
        ok = True
    if ok:
        return None
    version = getattr(bitsandbytes, "__version__", "?")
    return f"bitsandbytes {version} has no 8-bit optimizer kernel for device '{device_type}'"


def _check_eight_bit(spec: _Spec, groups: list[dict[str, Any]]) -> None:
    device_type = next(iter(_params(groups))).device.type
    problem = _bnb_8bit_problem(device_type)
    if problem is not None:
        plain = spec.name.replace("8bit", "")
        raise ConfigError(
            f"Optimizer '{spec.name}' needs bitsandbytes 8-bit kernels, which are unavailable here: "
            f"{problem}. Use optimizer_type = \"{plain}\" instead (same update rule, 32-bit state; "
            "a LoRA's optimizer state is small)."
        )


def _copy_groups(param_groups: Iterable[Any]) -> list[dict[str, Any]]:
    """Shallow-copy groups (the caller's dicts stay untouched); a bare tensor list is one group.

    Empty groups are kept, not dropped: group order and count are part of the optimizer's
    state_dict, and resuming must see the same layout.
    """
    items = list(param_groups)
    if items and not isinstance(items[0], Mapping):
        items = [{"params": items}]
    groups = [{**g, "params": list(g["params"])} for g in items]
    if not any(g["params"] for g in groups):
        raise ConfigError("No trainable parameters were given to the optimizer (every group is empty).")
    return groups


def _merge_top_level(user: dict[str, Any], **top: Any) -> None:
    """Fold top-level ``weight_decay``/``betas`` into the args; a conflicting value is an error."""
    for key, value in top.items():
        if value is None:
            continue
        value = tuple(value) if isinstance(value, list | tuple) else value
        if key in user and user[key] != value:
            raise ConfigError(
                f"'{key}' is set twice with different values: {value!r} and {user[key]!r} in "
                "optimizer_args. Keep one."
            )
        user[key] = value


def build_optimizer(
    name: str,
    param_groups: list[dict[str, Any]],
    *,
    lr: float,
    args: OptimArgs = None,
    weight_decay: float | None = None,
    betas: tuple[float, ...] | None = None,
) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` over ``param_groups``.

    ``lr`` is the default for groups without their own ``"lr"``; groups that carry one (e.g. U-Net
    1e-4, text encoder 5e-5) keep it. ``args`` are kohya ``optimizer_args`` (list, string or dict,
    see ``optim_args``). ``weight_decay``/``betas`` are top-level conveniences merged into ``args``.
    Raises ``ConfigError`` for an unknown name or argument, a missing package or unusable kernels.
    """
    spec = _lookup(name)
    user = parse_optim_args(args)
    if "lr" in user:
        raise ConfigError(
            "Set the learning rate with learning_rate / unet_lr / text_encoder_lr, not optimizer_args 'lr'."
        )
    _merge_top_level(user, weight_decay=weight_decay, betas=betas)
    try:
        cls = spec.load()
    except ImportError as exc:
        raise ConfigError(
            f"Optimizer '{spec.name}' needs the '{spec.package}' package: pip install {spec.package} ({exc})"
        ) from exc
    check_known_args(f"Optimizer '{spec.name}'", user, accepted_args(cls, {"self", "params", "lr"}))
    groups = _copy_groups(param_groups)
    kwargs: dict[str, Any] = {**spec.defaults, **user, "lr": lr}
    if spec.prepare is not None:
        spec.prepare(spec.name, groups, kwargs)
    if spec.eight_bit:
        _check_eight_bit(spec, groups)
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError) as exc:  # the library's own range checks, e.g. "Invalid beta"
        raise ConfigError(f"Optimizer '{spec.name}' rejected its settings: {exc}") from exc


def works_on_shards(name: str) -> bool:
    """True for torch's own optimizers (AdamW, SGD), whose updates run on FSDP's sharded weights
    (DTensors) unchanged; the others (bitsandbytes' 8-bit states, Prodigy's and D-Adaptation's
    sums over all weights, Adafactor's factored moments) are untested on shards (sharding.py)."""
    return _lookup(name).package == "torch"


def is_adaptive(name: str, args: OptimArgs = None) -> bool:
    """True when the optimizer sets its own step size, so ``lr`` should be ~1.0 (or is unused).

    D-Adaptation and Prodigy treat lr as a multiplier on the learned step; Adafactor counts only
    with ``relative_step=True`` (its default), where lr is ignored altogether.
    """
    spec = _lookup(name)
    if spec.name == "Adafactor":
        return bool(parse_optim_args(args).get("relative_step", True))
    return spec.adaptive


def lr_warning(name: str, lrs: Iterable[float], args: OptimArgs = None) -> str | None:
    """A message for the trainer to log when the learning rates look wrong for ``name``, else None.

    kohya warns below 0.1 for D-Adaptation/Prodigy: with lr=1e-4 they learn ~10⁴× too slowly,
    which users read as "the adaptive optimizer does not work". Guides use 1.0 (text encoder 0.5-1.0).
    """
    if not is_adaptive(name, args):
        return None
    spec = _lookup(name)
    if spec.name == "Adafactor":
        return None  # lr is not used at all with relative_step; _prepare_adafactor says so
    low = sorted({lr for lr in lrs if lr is not None and lr <= 0.1})
    if not low:
        return None
    return (
        f"{spec.name} adapts its own step size and multiplies it by the learning rate; "
        f"learning rates {low} will barely train. Use learning_rate = 1.0."
    )
