"""The Train tab's form, derived from the config schema: fields, groups, help, and the run TOML.

The UI edits the same run TOML the CLI trains from, so the form is built from
`lorakiln.config.schema` rather than written by hand: every key appears with its type, default,
choices and the schema's own description as help text, and a key added to the schema shows up
in the UI without UI changes. Values go back through the one config path (`build_config`), so
a form can never hold a value the CLI would refuse — the error names the key, as on the
command line.

Fields are shown in the kohya_ss GUI's groups (folders, basics, learning rates, optimizer and
schedule, network, advanced): `GROUPS` names the keys of the first five; everything else is
advanced, in schema order.
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from lorakiln.config.schema import SECTIONS

#: kohya_ss GUI-like groups; keys not listed are "advanced".
GROUPS: dict[str, tuple[str, ...]] = {
    "folders": ("model.pretrained_model", "model.vae", "data.train_data_dir",
                "output.output_dir", "output.output_name", "output.logging_dir"),
    "basics": ("data.resolution", "train.train_batch_size", "train.max_train_epochs", "train.max_train_steps",
               "output.save_every_n_epochs", "train.seed", "data.caption_extension", "data.cache_latents",
               "train.mixed_precision", "output.save_precision"),
    "learning rates": ("train.learning_rate", "train.unet_lr", "train.text_encoder_lr", "train.lr_warmup_steps"),
    "optimizer and schedule": ("train.optimizer_type", "train.optimizer_args", "train.lr_scheduler",
                               "train.lr_scheduler_num_cycles", "train.lr_scheduler_power"),
    "network": ("network.network_module", "network.network_dim", "network.network_alpha", "network.conv_dim",
                "network.conv_alpha", "network.dora_wd", "network.network_train_unet_only"),
}
GROUP_ORDER: tuple[str, ...] = (*GROUPS, "advanced")
#: Keys the form never shows: only the server decides them. `model.allow_pickle` lets a
#: checkpoint run code when it loads, so a browser must not be able to switch it on
#: (`run_guard.check_pickles` refuses a run TOML that sets it).
SERVER_ONLY_KEYS: frozenset[str] = frozenset({"model.allow_pickle"})


@dataclass(frozen=True)
class FieldSpec:
    """One form field: ``key`` is the dotted config key (``train.unet_lr``)."""

    key: str
    kind: str  # bool | int | float | str | choice | list | pair
    default: Any
    help: str
    group: str
    optional: bool  # None ("unset") is a valid value
    choices: tuple[str, ...] = ()


def _kind(annotation: Any, key: str) -> tuple[str, bool, tuple[str, ...]]:
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if isinstance(annotation, types.UnionType) else [annotation]
    base = inner[0] if len(inner) == 1 else annotation
    if typing.get_origin(base) is typing.Literal:
        return "choice", optional, tuple(str(a) for a in typing.get_args(base))
    if key == "train.optimizer_type":
        from lorakiln.config.optimizer_names import optimizer_names

        return "choice", optional, tuple(optimizer_names())
    if key == "train.lr_scheduler":
        from lorakiln.config.optimizer_names import scheduler_names

        return "choice", optional, tuple(scheduler_names())
    origin = typing.get_origin(base)
    if origin is list:
        return "list", optional, ()
    if origin is tuple:
        return "pair", optional, ()
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    return kinds.get(base, "str"), optional, ()  # unions such as `str | int` edit as text


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    return list(value) if isinstance(value, tuple) else value


def field_specs() -> list[FieldSpec]:
    """Every config key as a form field, grouped and in display order."""
    group_of = {key: group for group, keys in GROUPS.items() for key in keys}
    specs = []
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            key = f"{section}.{name}"
            if key in SERVER_ONLY_KEYS:
                continue
            kind, optional, choices = _kind(field.annotation, key)
            specs.append(FieldSpec(key, kind, _default(field), field.description or "", group_of.get(key, "advanced"),
                                   optional, choices))
    order = {key: i for i, key in enumerate(k for keys in GROUPS.values() for k in keys)}
    return sorted(specs, key=lambda s: (GROUP_ORDER.index(s.group), order.get(s.key, len(order))))


def values_from_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """A run TOML's sections as ``{dotted key: value}`` over every field's default."""
    from lorakiln.config.load import route_flat_keys

    values = {spec.key: spec.default for spec in field_specs()}
    for section, table in route_flat_keys(dict(raw)).items():
        if isinstance(table, dict):
            values |= {f"{section}.{name}": value for name, value in table.items()}
        else:
            values[section] = table  # top-level keys such as `preset`
    return values


def raw_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """The sections a run TOML needs for `values`: only keys that differ from the defaults, so a
    saved file reads like one a person wrote (and keeps working when a default improves)."""
    defaults = {spec.key: spec.default for spec in field_specs()}
    raw: dict[str, Any] = {}
    for key, value in values.items():
        if value is None and defaults.get(key) is None:
            continue
        if key in defaults and value == defaults[key]:
            continue
        if "." not in key:
            raw[key] = value
            continue
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return raw


def load_run_toml(path: str | Path) -> dict[str, Any]:
    """Form values of the run TOML at `path`."""
    path = Path(path)
    with path.open("rb") as fh:
        return values_from_raw(tomllib.load(fh))


def save_run_toml(path: str | Path, values: dict[str, Any]) -> Path:
    """Check `values` through the config path, then write them as a run TOML (atomically).

    Relative paths stay relative to the file, as in any hand-written run TOML. A bad value
    raises `ConfigError` naming the key before anything is written.
    """
    import tomli_w

    from lorakiln.atomic import write_text_atomic
    from lorakiln.config.load import build_config

    path = Path(path)
    raw = raw_from_values(values)
    build_config(json.loads(json.dumps(raw)), source=str(path), base_dir=path.parent)
    write_text_atomic(path, tomli_w.dumps(raw))
    return path


def step_summary(values: dict[str, Any], base_dir: str | Path) -> str:
    """The trainer's own step arithmetic for `values` (what `lorakiln train --dry-run` prints),
    for the form's live total-steps line; a config or dataset problem comes back as its message."""
    from lorakiln.config.load import build_config
    from lorakiln.errors import LorakilnError
    from lorakiln.training.plan import build_data, plan_lines, plan_steps

    try:
        cfg = build_config(json.loads(json.dumps(raw_from_values(values))), source="the form",
                           base_dir=Path(base_dir))
        _, data = build_data(cfg)
        return "\n".join(plan_lines(cfg, data, plan_steps(cfg, data.num_batches_per_epoch)))
    except LorakilnError as err:
        return f"error: {err}"
