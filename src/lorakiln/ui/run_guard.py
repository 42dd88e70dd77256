"""The sandbox applied to a run config: every path a training started from the UI would read or
write is checked before the run is queued (and again when it starts).

`PATH_KEYS` classifies every path-valued key of `lorakiln.config.schema`; `TEXT_KEYS` names the
string keys that are not paths. A string key in neither list (a key added to the schema later)
fails closed: a run that sets it is refused until it is classified here, and a test checks that
the two lists cover the schema.

Pickles: `model.allow_pickle` is not in the UI's form, and a run TOML that sets it is refused
unless the server itself was started with ``--allow-pickle`` (which ``--listen`` refuses), and
never together with a hub id, whose files nobody on this machine has looked at.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.config.schema import SECTIONS, RunConfig
from lorakiln.models.hub_id import looks_like_hub_id
from lorakiln.ui.sandbox import Sandbox, SandboxError


@dataclass(frozen=True)
class PathKey:
    """How a key is checked: ``read`` from the roots of `kind`, ``write`` inside the project,
    ``model`` (read, but a built-in name or hub id is allowed) or ``hub`` (a hub id only)."""

    mode: str
    kind: str = "project"


PATH_KEYS: dict[str, PathKey] = {
    "model.pretrained_model": PathKey("model", "model"),
    "model.vae": PathKey("model", "vae"),
    "model.config_dir": PathKey("read", "model"),
    "data.train_data_dir": PathKey("read", "data"),
    "data.dataset_name": PathKey("hub"),
    "network.network_weights": PathKey("read", "lora"),
    "train.resume": PathKey("read", "project"),  # states the UI's own runs wrote
    "output.output_dir": PathKey("write"),
    "output.logging_dir": PathKey("write"),
    "prior.class_data_dir": PathKey("write"),  # missing class images are generated into it
    "validation.sample_prompts": PathKey("read", "data"),
    "validation.validation_images": PathKey("read", "data"),
}
#: String keys that hold no path (names, prompts, choices).
TEXT_KEYS: frozenset[str] = frozenset({
    "preset", "data.caption_column", "data.image_column", "data.instance_prompt", "data.caption_extension",
    "train.optimizer_type", "train.optimizer_args", "train.lr_scheduler", "output.output_name",
    "output.trigger_phrase", "pivotal.token_abstraction", "pivotal.initializer_concept", "prior.class_prompt",
    "preservation.preservation_class", "preservation.preservation_trigger", "preservation.preservation_prompts",
    "validation.validation_prompt", "validation.validation_negative_prompt", "validation.sample_sampler",
    "validation.drift_prompts", "network.target_modules", "network.target_include", "network.target_exclude",
})


#: Text keys that become part of a file name (`<image stem><caption_extension>`): no path allowed.
NAME_KEYS: tuple[str, ...] = ("data.caption_extension", "output.output_name")


def _refuse_path_names(cfg: RunConfig) -> None:
    for key in NAME_KEYS:
        section, name = key.split(".", 1)
        value = str(getattr(getattr(cfg, section), name) or "")
        if any(c in value for c in "/\\\x00") or ".." in value:
            raise SandboxError(f"{key} = {value!r} is part of a file name and cannot contain a path; use e.g. "
                               f"{'.txt' if 'extension' in key else 'last'}")


def _holds_text(annotation: Any) -> bool:
    if annotation in (str, Path):
        return True
    return any(_holds_text(a) for a in typing.get_args(annotation)) if (
        isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None) else False


def text_keys_of_schema() -> list[str]:
    """Every config key whose value can hold a string (so possibly a path)."""
    return [f"{s}.{n}" for s, model in SECTIONS.items() for n, f in model.model_fields.items()
            if _holds_text(f.annotation)]


def _refuse_unclassified(cfg: RunConfig) -> None:
    defaults = {f"{s}.{n}": f.get_default(call_default_factory=True)
                for s, model in SECTIONS.items() for n, f in model.model_fields.items()}
    for key in text_keys_of_schema():
        if key in PATH_KEYS or key in TEXT_KEYS:
            continue
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        if value not in (None, "", defaults.get(key)):
            raise SandboxError(f"{key} = {value!r}: the web UI cannot yet tell whether this key names a path, "
                               "so it does not run it; start this run with `lorakiln train` instead")


def check_pickles(box: Sandbox, values: dict[str, Any]) -> None:
    """Refuse ``model.allow_pickle = true`` unless the server allows pickles (and never for a hub id)."""
    if not values.get("model.allow_pickle"):
        return
    if not box.allow_pickle:
        raise SandboxError("model.allow_pickle = true: pickle files can run any code when loaded, so the web UI "
                           "never enables them; remove the key (convert the model to .safetensors), or train this "
                           "run with the CLI (`lorakiln train`), or restart the UI with --allow-pickle on a "
                           "machine only you can reach")
    model = str(values.get("model.pretrained_model") or "")
    if looks_like_hub_id(model) or looks_like_hub_id(str(values.get("model.vae") or "")):
        raise SandboxError("model.allow_pickle = true with a hub id: the UI never loads pickles it downloaded; "
                           "download the model, check it, and name its local path")


def check_config(box: Sandbox, cfg: RunConfig, base: Path) -> RunConfig:
    """Resolve every path key of `cfg` (relative to `base`, the run TOML's folder) through the sandbox.

    Returns `cfg` unchanged; raises `SandboxError` naming the key for the first path outside."""
    base = box.resolve_write(base, what="run TOML folder")
    check_pickles(box, {"model.allow_pickle": cfg.model.allow_pickle,
                        "model.pretrained_model": cfg.model.pretrained_model, "model.vae": cfg.model.vae})
    for key, rule in PATH_KEYS.items():
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        if value in (None, ""):
            continue
        value = str(value)
        if rule.mode == "hub":
            if not looks_like_hub_id(value) or (base / value).exists() or Path(value).is_absolute():
                raise SandboxError(f"{key} = {value!r}: the UI accepts only a hub dataset id (org/name) here; "
                                   "for a folder use data.train_data_dir")
        elif rule.mode == "model":
            box.resolve_model(value, rule.kind, base=base, what=key)
        elif rule.mode == "read":
            box.resolve_read(value, rule.kind, base=base, what=key)
        else:
            box.resolve_write(value, base=base, what=key)
    if cfg.output.logging_dir is None:  # the default `<output_dir>/logs` follows output_dir
        box.resolve_write(Path(cfg.output.output_dir) / "logs", base=base, what="output.logging_dir")
    _refuse_path_names(cfg)
    _refuse_unclassified(cfg)
    return cfg


def check_values(box: Sandbox, values: dict[str, Any], toml: Path) -> RunConfig:
    """The form's values as the config they make, checked (the run TOML will live at `toml`)."""
    from lorakiln.config.load import build_config
    from lorakiln.ui.forms import raw_from_values

    check_pickles(box, values)
    toml = box.resolve_write(toml, what="run TOML")
    cfg = build_config(json.loads(json.dumps(raw_from_values(values))), source=str(toml), base_dir=toml.parent)
    return check_config(box, cfg, toml.parent)


def check_run(box: Sandbox, config: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The run TOML at `config` with `overrides` (``--set`` items), as the trainer will read it, checked."""
    from lorakiln.config.load import load_config

    path = box.resolve_write(config, what="run TOML")
    return check_config(box, load_config(path, list(overrides or [])), path.parent)
