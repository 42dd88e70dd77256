"""One config path: TOML file → preset defaults → `--set a.b=v` overrides → typed `RunConfig`.

Errors are `ConfigError`s that name the file, the dotted key and the value, and suggest the
nearest valid key for a typo. Flat kohya-style keys (`unet_lr = 1e-4` at top level) are moved
into the one section that owns them, so a kohya_ss user's TOML mostly works unchanged.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from lorakiln.config.presets import get_preset
from lorakiln.config.schema import SECTIONS, RunConfig
from lorakiln.errors import ConfigError

TOP_LEVEL_KEYS = {"preset", *SECTIONS}


def _field_names(model: type) -> set[str]:
    """Field names plus their accepted aliases (e.g. diffusers' `snr_gamma`)."""
    names = set(model.model_fields)
    for field in model.model_fields.values():
        alias = field.validation_alias
        names.update(c for c in getattr(alias, "choices", ()) if isinstance(c, str))
    return names


def _owner_section(key: str) -> str | None:
    owners = [name for name, model in SECTIONS.items() if key in _field_names(model)]
    return owners[0] if len(owners) == 1 else None


def _all_dotted_keys() -> list[str]:
    return [f"{s}.{k}" for s, model in SECTIONS.items() for k in model.model_fields]


def _nearest_field(leaf: str) -> str | None:
    """The dotted key whose *field name* is nearest to `leaf`, in any section.

    Names are compared field to field, never against dotted text: a flat `network_dimm` is one
    letter from the field `network_dim`, while the dotted `network.conv_dim` merely shares more
    letters with it ("network" + "dim") and used to win."""
    owners: dict[str, str] = {}
    for dotted in _all_dotted_keys():
        owners.setdefault(dotted.split(".", 1)[1], dotted)
    match = difflib.get_close_matches(leaf, list(owners), n=1, cutoff=0.6)
    return owners[match[0]] if match else None


def suggest_key(key: str, section: str | None = None) -> str:
    """A hint such as "did you mean 'train.unet_lr'?" for an unknown (dotted) key, or ''."""
    leaf = key.split(".")[-1]
    owner = _owner_section(leaf)
    if owner and owner != section:
        return f"'{leaf}' belongs in [{owner}] (use {owner}.{leaf})"
    if section in SECTIONS:
        match = difflib.get_close_matches(leaf, list(SECTIONS[section].model_fields), n=1, cutoff=0.6)
        if match:
            return f"did you mean '{section}.{match[0]}'?"
    nearest = _nearest_field(leaf)
    if nearest is None and section is None and "." not in key:
        found = difflib.get_close_matches(key, list(TOP_LEVEL_KEYS), n=1, cutoff=0.6)  # `[trian]`
        nearest = f"[{found[0]}]" if found else None
    return f"did you mean '{nearest}'?" if nearest else ""


def route_flat_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Move top-level kohya keys into their section; leave unknown ones for validation to name."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key in list(out):
        if key in TOP_LEVEL_KEYS:
            continue
        owner = _owner_section(key)
        if owner is not None:
            out.setdefault(owner, {})
            if not isinstance(out[owner], dict):
                continue
            out[owner][key] = out.pop(key)
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge `top` over `base`, recursing into tables."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `train.unet_lr=2e-4` into (['train', 'unet_lr'], 0.0002); values are TOML literals,
    and anything that is not a TOML literal is taken as a string (`model.vae=/x/vae`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not 'section.key=value' (e.g. train.unet_lr=2e-4)")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has no key")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config dict (after flat-key routing)."""
    out = deep_merge({}, raw)
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1 and _owner_section(path[0]):
            path = [_owner_section(path[0]) or "", path[0]]
        if len(path) == 1 and path[0] != "preset":
            hint = suggest_key(path[0])
            raise ConfigError(f"override {text!r}: '{path[0]}' is not a config key" + (f"; {hint}" if hint else ""))
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return out


def _format_validation(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        dotted = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            section = loc[0] if len(loc) > 1 else None
            hint = suggest_key(loc[-1], section)
            lines.append(f"  unknown key '{dotted}'" + (f": {hint}" if hint else ""))
        elif item["type"] == "missing":
            lines.append(f"  missing required key '{dotted}'")
        else:
            value = item.get("input")
            shown = f" = {value!r}" if not isinstance(value, dict) else ""
            lines.append(f"  {dotted}{shown}: {item['msg']}")
    return ConfigError(f"invalid config {source}:\n" + "\n".join(lines))


def build_config(raw: dict[str, Any], *, source: str = "(config)", base_dir: Path | None = None,
                 overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw dict (as read from TOML) into a `RunConfig` with absolute paths."""
    raw = route_flat_keys(raw)
    raw = apply_overrides(raw, overrides or [])
    preset = raw.get("preset")
    if preset:
        raw = deep_merge(route_flat_keys(get_preset(str(preset))), raw)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_validation(err, source) from None
    return cfg.resolved_paths(base_dir or Path.cwd())


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run TOML; relative paths in it are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a run TOML "
                          "(see examples/quickstart/config.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; re-save it as UTF-8") from None
    return build_config(raw, source=str(path), base_dir=path.parent.resolve(), overrides=overrides)


def dump_config(cfg: RunConfig) -> str:
    """Serialise a config to TOML (None values are left out: TOML has no null)."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)
