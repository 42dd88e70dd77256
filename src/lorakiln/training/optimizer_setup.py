"""The optimizer-LR policy of a run, in one place: which learning rate each part trains with, the
optimizer's arguments from the config, and the optimizer and LR schedule built from them.

The rules, in the order they apply:
1. Each part's own rate (`unet_lr`, `text_encoder_lr`, `pivotal.text_encoder_ti_lr`), else the
   global `learning_rate` — which is therefore ignored when every part has its own (the kohya_ss
   community settings work this way).
2. Prodigy and most D-Adaptation optimizers estimate one step size for all groups and assert (or
   silently use the first group's lr) when the groups differ, so every group gets
   `learning_rate`, as the diffusers advanced SDXL script does. DAdaptAdam keeps per-part ratios
   as `layer_scale` (`optimizers._prepare_layer_scale`).
3. A warning when an adaptive optimizer gets a learning rate far below 1.0.

torch is imported only where the optimizer is built, so `resolve_lrs` and `optimizer_args` stay
cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorakiln.config.optimizer_names import validate_optimizer_name
from lorakiln.config.schema import RunConfig
from lorakiln.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lorakiln.networks.pivotal import PivotalEmbeddings
    from lorakiln.training.plan import StepPlan

Log = Callable[[str], None] | None

#: Named config fields (the diffusers scripts' flags) → optimizer constructor arguments.
_NAMED_OPTIMIZER_ARGS = {
    "adam_weight_decay": "weight_decay", "adam_epsilon": "eps",
    "prodigy_safeguard_warmup": "safeguard_warmup", "prodigy_use_bias_correction": "use_bias_correction",
    "prodigy_decouple": "decouple", "prodigy_beta3": "beta3", "prodigy_d_coef": "d_coef",
}  # fmt: skip
#: Adaptive optimizers that need one initial lr for every group (dadaptation/prodigyopt assert it).
ONE_LR_OPTIMIZERS = frozenset({"Prodigy", "DAdaptLion", "DAdaptSGD", "DAdaptAdan", "DAdaptAdaGrad"})


@dataclass
class Optimization:
    """What `build_optimization` returns: the optimizer, its LR schedule and how it was set up."""

    optimizer: torch.optim.Optimizer
    schedule: Any
    warmup_steps: int
    #: `module.Class(optimizer_args)`, for the file metadata (kohya `ss_optimizer`).
    description: str


def resolve_lrs(cfg: RunConfig, train_te: bool) -> tuple[float, float | None]:
    """(unet_lr, text_encoder_lr): each part's own rate, else the global `learning_rate` (rule 1);
    no text-encoder rate when the text encoder is not trained."""
    unet_lr = cfg.train.unet_lr if cfg.train.unet_lr is not None else cfg.train.learning_rate
    if not train_te:
        return unet_lr, None
    te_lr = cfg.train.text_encoder_lr if cfg.train.text_encoder_lr is not None else cfg.train.learning_rate
    return unet_lr, te_lr


def optimizer_args(cfg: RunConfig) -> dict[str, Any]:
    """kohya `optimizer_args` plus the named fields (`adam_beta1`, `prodigy_safeguard_warmup`, …);
    a value given both ways is an error naming both spellings."""
    from lorakiln.training.optim_args import parse_optim_args

    t = cfg.train
    args = parse_optim_args(t.optimizer_args)
    named: dict[str, Any] = {arg: getattr(t, f) for f, arg in _NAMED_OPTIMIZER_ARGS.items()
                             if getattr(t, f) is not None}
    if t.adam_beta1 is not None or t.adam_beta2 is not None:
        named["betas"] = (0.9 if t.adam_beta1 is None else t.adam_beta1,
                          0.999 if t.adam_beta2 is None else t.adam_beta2)
    for key, value in named.items():
        if key in args and args[key] != value:
            raise ConfigError(f"optimizer argument '{key}' is set twice: train.optimizer_args has "
                              f"{args[key]!r}, a named train.* field has {value!r}; keep one")
    return args | named


def same_lr_for_adaptive(optimizer_type: str, learning_rate: float, groups: list[dict[str, Any]],
                         log: Log) -> None:
    """Rule 2: give every group with a learning rate `learning_rate` when `optimizer_type` learns
    one step size for all parameters (the diffusers advanced SDXL script's blog post: "we start
    with an identical initial learning rate for all trained parameters"). A group at 0 stays
    frozen; the change is logged, since per-part rates the user set are overridden."""
    if validate_optimizer_name(optimizer_type) not in ONE_LR_OPTIMIZERS:
        return
    lrs = {g["lr"] for g in groups if g.get("lr")}
    if len(lrs) > 1 and log:
        log(f"note: {optimizer_type} uses one initial learning rate for all parts; using "
            f"learning_rate = {learning_rate} for every group (was {sorted(lrs)})")
    for g in groups:
        if g.get("lr"):
            g["lr"] = learning_rate


def pivotal_group(cfg: RunConfig, pivotal: PivotalEmbeddings) -> dict[str, Any]:
    """The new embeddings' optimizer group: its own lr and weight decay. It stays in the optimizer
    after the pivot (frozen parameters get no gradient), so the optimizer layout never changes."""
    t, p = cfg.train, cfg.pivotal
    lr = p.text_encoder_ti_lr or t.text_encoder_lr or t.learning_rate
    group: dict[str, Any] = {"name": "text_encoder_ti", "params": list(pivotal.parameters()), "lr": lr}
    if p.adam_weight_decay_text_encoder is not None:
        group["weight_decay"] = p.adam_weight_decay_text_encoder
    return group


def param_groups(cfg: RunConfig, network: Any, pivotal: PivotalEmbeddings | None,
                 lrs: tuple[float, float | None]) -> list[dict[str, Any]]:
    """The network's groups at their parts' rates (rule 1) plus the pivotal embeddings' group;
    `build_optimization` applies rule 2 to them."""
    groups: list[dict[str, Any]] = network.param_groups(unet_lr=lrs[0], text_encoder_lr=lrs[1],
                                                        default_lr=cfg.train.learning_rate)
    if pivotal is not None:
        groups.append(pivotal_group(cfg, pivotal))
    return groups


def build_optimization(cfg: RunConfig, groups: list[dict[str, Any]], lrs: tuple[float, float | None],
                       plan: StepPlan, log: Log) -> Optimization:
    """The optimizer over `groups` (after rule 2) and its schedule over the planned steps."""
    from lorakiln.training.optimizers import build_optimizer, lr_warning
    from lorakiln.training.schedulers import build_scheduler, resolve_warmup_steps

    t = cfg.train
    same_lr_for_adaptive(t.optimizer_type, t.learning_rate, groups, log)
    optimizer = build_optimizer(t.optimizer_type, groups, lr=t.learning_rate, args=optimizer_args(cfg))
    warmup = resolve_warmup_steps(t.lr_warmup_steps, plan.total_steps)
    if log and (hint := lr_warning(t.optimizer_type, [lr for lr in lrs if lr is not None], t.optimizer_args)):
        log(f"warning: {hint}")
    schedule = build_scheduler(t.lr_scheduler, optimizer, num_training_steps=plan.total_steps,
                               num_warmup_steps=warmup, num_cycles=t.lr_scheduler_num_cycles,
                               power=t.lr_scheduler_power)
    description = f"{type(optimizer).__module__}.{type(optimizer).__name__}" + (
        f"({','.join(t.optimizer_args)})" if t.optimizer_args else "")
    return Optimization(optimizer, schedule, warmup, description)
