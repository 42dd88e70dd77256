"""The Train tab's form, derived from the config schema: fields, groups, help, and the run TOML.

The UI edits the same run TOML the CLI trains from, so the form is built from
`lorakiln.config.schema` rather than written by hand: every key appears with its type, default,
choices and the schema's own description as help text, and a key added to the schema shows up
in the UI without UI changes. Values go back through the one config path (`build_config`), so
a form can never hold a value the CLI would refuse — the error names the key, as on the
command line.

Fields are laid out as the kohya_ss GUI does it: the essentials first, the rest in collapsed
groups, each with a human label (`ui/labels.py`); numbers carry the schema's bounds, so the
widget itself refuses a value below `ge` or above `le`.
"""

from __future__ import annotations

import functools
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from lorakiln.config.schema import SECTIONS
from lorakiln.ui.labels import ESSENTIALS, GROUPS, LAST_GROUP, label, placement

#: Where fields sit: "essentials" (the first screen) then the collapsed groups (`ui/labels.py`).
GROUP_ORDER: tuple[str, ...] = ("essentials", *GROUPS)
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
    label: str = ""
    minimum: float | None = None  # the schema's `ge` (inclusive bounds only: a widget cannot say "> 0")
    maximum: float | None = None  # the schema's `le`


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


def _bounds(field: Any) -> tuple[float | None, float | None]:
    """The schema's inclusive bounds (`Field(ge=…, le=…)`), which a number widget can enforce."""
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    return low, high


@functools.cache
def field_specs() -> tuple[FieldSpec, ...]:
    """Every config key as a form field, grouped and in display order (cached: the schema is
    fixed for the process, and handlers call this on every request)."""
    group_of = placement()
    specs = []
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            key = f"{section}.{name}"
            if key in SERVER_ONLY_KEYS:
                continue
            kind, optional, choices = _kind(field.annotation, key)
            low, high = _bounds(field)
            specs.append(FieldSpec(key, kind, _default(field), field.description or "",
                                   group_of.get(key, LAST_GROUP), optional, choices, label(key), low, high))
    order = {key: i for i, key in enumerate((*ESSENTIALS, *(k for keys in GROUPS.values() for k in keys)))}
    return tuple(sorted(specs, key=lambda s: (GROUP_ORDER.index(s.group), order.get(s.key, len(order)))))


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


def step_summary(values: dict[str, Any], base_dir: str | Path, processes: int = 1) -> str:
    """The trainer's own step arithmetic for `values` (what `lorakiln train --dry-run` prints),
    for the form's live total-steps line; a config or dataset problem comes back as its message.
    `processes` > 1: the global batch of a run on that many processes (`--num-processes`)."""
    from lorakiln.config.load import build_config
    from lorakiln.errors import LorakilnError
    from lorakiln.training.plan import build_data, plan_lines, plan_steps

    try:
        cfg = build_config(json.loads(json.dumps(raw_from_values(values))), source="the form",
                           base_dir=Path(base_dir))
        _, data = build_data(cfg, processes=processes)
        return "\n".join(plan_lines(cfg, data, plan_steps(cfg, data.num_batches_per_epoch), processes))
    except LorakilnError as err:
        return f"error: {err}"
