"""Optimizer and learning-rate scheduler names: the torch-free registry.

A config is checked (`train --dry-run`, `dataset check`, the config importers, the UI's choice
lists) long before an optimizer is built, and that check must not pay for importing torch. So the
names, their aliases and the spelling rules live here; `training.optimizers` and
`training.schedulers` map the same names to constructors and read this module, so the two can
never disagree about which names exist.

Names follow kohya sd-scripts (`optimizer_type`, `lr_scheduler`), so settings copied from guides
work unchanged. Optimizer names match case-insensitively, ignoring `_`, `-` and spaces
(`adamw8bit` and `AdamW_8bit` agree); scheduler names ignore case and read `-` as `_`, and kohya's
`adafactor:<initial lr>` carries a number.
"""

from __future__ import annotations

import difflib

from lorakiln.errors import ConfigError

__all__ = [
    "OPTIMIZERS", "SCHEDULERS", "normalise_scheduler", "optimizer_names", "scheduler_names",
    "validate_optimizer_name", "validate_scheduler_name",
]

#: Canonical optimizer name → other spellings users bring (kohya's "DAdaptation" is DAdaptAdam).
#: Order is the order shown in errors, docs and the UI.
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "AdamW": (), "AdamW8bit": (), "Lion": (), "Lion8bit": (), "SGD": (), "SGDNesterov": (),
    "Adafactor": (), "DAdaptAdam": ("DAdaptation",), "DAdaptLion": (), "DAdaptSGD": (), "DAdaptAdan": (),
    "DAdaptAdaGrad": (), "Prodigy": (),
}  # fmt: skip

#: The diffusers curves, plus transformers' Adafactor proxy schedule.
SCHEDULERS: tuple[str, ...] = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                               "polynomial", "adafactor")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")


def _build_index() -> dict[str, str]:
    """Spelling key → canonical name; two names sharing a key would be a programming error."""
    index: dict[str, str] = {}
    for name, aliases in OPTIMIZERS.items():
        for alias in (name, *aliases):
            if _key(alias) in index:
                raise ValueError(f"optimizer name {alias!r} registered twice")
            index[_key(alias)] = name
    return index


_INDEX = _build_index()


def optimizer_names() -> list[str]:
    """Canonical optimizer names, in registry order (for errors, docs and the UI)."""
    return list(OPTIMIZERS)


def validate_optimizer_name(name: str) -> str:
    """The canonical name for `name`, or a ConfigError with the closest name and every valid one."""
    canonical = _INDEX.get(_key(name))
    if canonical is not None:
        return canonical
    close = difflib.get_close_matches(_key(name), list(_INDEX), n=1, cutoff=0.5)
    hint = f" Did you mean '{_INDEX[close[0]]}'?" if close else ""
    raise ConfigError(f"Unknown optimizer '{name}'.{hint} Valid optimizers: {', '.join(optimizer_names())}.")


def scheduler_names() -> list[str]:
    """Valid scheduler names (for errors, docs and the UI)."""
    return list(SCHEDULERS)


def normalise_scheduler(name: str) -> tuple[str, float | None]:
    """`"Cosine-With-Restarts"` → `("cosine_with_restarts", None)`; kohya's `"adafactor:1e-3"` →
    `("adafactor", 0.001)` (the lr logged before Adafactor's first step)."""
    key, _, value = name.partition(":")
    key = key.strip().lower().replace("-", "_")
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, SCHEDULERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown lr_scheduler '{name}'.{hint} Valid schedulers: {', '.join(SCHEDULERS)}.")
    if not value:
        return key, None
    if key != "adafactor":
        raise ConfigError(f"lr_scheduler '{name}': only 'adafactor:<initial lr>' takes a ':' value.")
    try:
        return key, float(value.strip())  # also 1e-3 and inf, as the optimizer_args grammar reads numbers
    except ValueError:
        raise ConfigError(f"lr_scheduler '{name}': '{value}' is not a number.") from None


def validate_scheduler_name(name: str) -> str:
    """The canonical scheduler name, or a ConfigError listing valid ones."""
    return normalise_scheduler(name)[0]
