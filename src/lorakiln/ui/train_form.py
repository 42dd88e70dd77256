"""The Train tab's form as data: component values ⇄ config values, the run TOML's load and save,
the live step count, and the checks Start makes before it queues anything.

The form edits the project's run TOML and nothing else holds its values: the page loads the
file on every visit and after every Start (`load_form`), and every save says which values it
changed (`changes`), so the form and the file cannot drift apart unseen. Values go back through
the one config path (`forms.save_run_toml` → `build_config`) and through `run_guard`, so a form
can never hold a value the CLI would refuse or a path outside the server's folders.

Handlers take the server's `Sandbox` first; the form travels as (run TOML path, extra keys,
one value per field in `field_specs()` order), which is what gradio passes for a list of inputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorakiln.errors import ConfigError, DatasetError, LorakilnError
from lorakiln.ui.forms import FieldSpec, field_specs, load_run_toml, save_run_toml, step_summary
from lorakiln.ui.run_guard import check_values
from lorakiln.ui.sandbox import Sandbox, SandboxError

#: A new project's form: the Dataset tab's folder and an output folder inside the project.
NEW_PROJECT = {"data.train_data_dir": "train", "output.output_dir": "output"}
_BOOL3 = {"": None, "true": True, "false": False}
#: Where an error that names no field is shown: dataset problems beside the dataset field,
#: anything else beside the run TOML's name.
DATASET_KEY, FILE_KEY = "data.train_data_dir", "run TOML"


def toml_path(box: Sandbox, path: str | None) -> Path:
    """The run TOML: `path` (relative to the project) or `<project>/run.toml`; a `.toml` file
    inside the project (so a save can never replace another kind of file)."""
    file = box.resolve_write((path or "").strip() or "run.toml", what="run TOML")
    if file.suffix.lower() != ".toml":
        raise SandboxError(f"run TOML {path!r}: name a .toml file (e.g. run.toml)")
    return file


# -- form values <-> component values --------------------------------------------------------

def to_component(spec: FieldSpec, value: Any) -> Any:
    """A config value as its component shows it (lists and pairs as JSON text)."""
    if spec.kind == "bool":
        return {None: "", True: "true", False: "false"}[value] if spec.optional else bool(value)
    if spec.kind in ("list", "pair"):
        if value is None:
            return ""
        # a TOML may hold the short forms the config accepts (`resolution = 64`, `"64,64"`): shown as written
        return json.dumps(list(value) if isinstance(value, (list, tuple)) else value)
    if spec.kind in ("str", "choice") or (spec.optional and spec.kind in ("int", "float")):
        return "" if value is None else str(value)  # optional numbers are text boxes: empty = unset
    return value


def from_component(spec: FieldSpec, value: Any) -> Any:
    """A component's value as the config value (empty means unset for optional fields)."""
    if isinstance(value, str):
        value = value.strip()
    if spec.kind == "bool":
        return _BOOL3.get(str(value)) if spec.optional else bool(value)
    if value is None or value == "":
        if spec.kind == "list" and not spec.optional:
            return []
        return None if spec.optional or spec.kind in ("int", "float", "choice") else ""
    if spec.kind in ("list", "pair"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{spec.key}: {value!r} is not a JSON list, e.g. [512, 512]") from None
    if spec.kind in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{spec.key}: {value!r} is not a number") from None
        if spec.kind == "int":
            return int(number) if number.is_integer() else number  # a fraction: the config names the key
        return number
    return value


def form_values(extra: dict[str, Any] | None, components: tuple[Any, ...]) -> dict[str, Any]:
    """Config values from the components, plus keys the form has no field for (e.g. `preset`)."""
    specs = field_specs()
    return dict(extra or {}) | {spec.key: from_component(spec, v) for spec, v in zip(specs, components, strict=True)}


def component_values(values: dict[str, Any]) -> list[Any]:
    return [to_component(spec, values.get(spec.key, spec.default)) for spec in field_specs()]


def _new_form() -> dict[str, Any]:
    return {s.key: s.default for s in field_specs()} | NEW_PROJECT


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    keys = {s.key for s in field_specs()}
    return {k: v for k, v in values.items() if k not in keys}, component_values(values)


# -- what changed -------------------------------------------------------------------------------

def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human lines for the values that differ: "Epochs: 1 → 8" (fields by label, others by key)."""
    labels = {s.key: s.label for s in field_specs()}
    lines = []
    for key in [*labels, *sorted((set(before) | set(after)) - set(labels))]:
        old, new = before.get(key), after.get(key)
        if old != new and not (old in (None, "", []) and new in (None, "", [])):
            lines.append(f"{labels.get(key, key)}: {_show(old)} → {_show(new)}")
    return lines


def _show(value: Any) -> str:
    return "unset" if value in (None, "") else json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


# -- errors, by field -----------------------------------------------------------------------------

def field_errors(message: str, *, dataset: bool = False) -> dict[str, str]:
    """Which fields an error message is about: {key: its lines}. A line naming a config key starts
    that field's message and the lines after it that name none continue it (preflight's
    multi-line findings); lines before any key go beside the dataset field (`dataset`: a
    dataset error) or the run TOML's name. A heading such as "… problem(s) …:" is dropped."""
    keys = sorted((s.key for s in field_specs()), key=len, reverse=True)  # `train.lr_scheduler_power` first
    found: dict[str, list[str]] = {}
    current = DATASET_KEY if dataset else FILE_KEY
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        key = next((k for k in keys if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", line)), None)
        if not line or (key is None and line.endswith(":") and not found):
            continue
        current = key or current
        found.setdefault(current, []).append(line)
    return {key: " ".join(text) for key, text in found.items()}


def start_problems(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> dict[str, str]:
    """Everything `lorakiln train --dry-run` would refuse in the form as it is now — config values,
    paths outside the server's folders, missing or broken files, an empty or misnamed dataset —
    as {field key: message}; empty when the run can start. Reads no model and writes nothing."""
    from lorakiln.training.plan import describe_plan

    try:
        file = toml_path(box, path)
    except LorakilnError as err:
        return {FILE_KEY: str(err)}
    try:
        values = form_values(extra, components)
        cfg = check_values(box, values, file)
        describe_plan(cfg, log=None)
    except DatasetError as err:
        return field_errors(str(err), dataset=True)
    except LorakilnError as err:
        return field_errors(str(err))
    return {}


# -- handlers -----------------------------------------------------------------------------------

def load_form(box: Sandbox, path: str) -> tuple[Any, ...]:
    """(extra keys, message, *component values) of the run TOML, or a new project's form."""
    try:
        file = toml_path(box, path)
    except LorakilnError as err:
        return ({}, f"error: {err}", *component_values(_new_form()))
    if file.is_file():
        try:
            values = load_run_toml(file)
        except (OSError, ValueError, LorakilnError) as err:  # tomllib raises ValueError subclasses
            values, msg = _new_form(), f"error: {file}: {err}"
        else:
            msg = f"loaded {file.name}"
            if values.get("model.allow_pickle") and not box.allow_pickle:
                msg += ("; note: it sets model.allow_pickle = true, which the UI refuses (pickles run code when "
                        "loaded): remove it or train this file from a terminal")
    else:
        values, msg = _new_form(), f"{file.name} does not exist yet: a new form (Save or Start writes it)"
    extra, shown = _split(values)
    return (extra, msg, *shown)


def apply_preset(name: str, extra: dict[str, Any], *components: Any) -> tuple[Any, ...]:
    """(extra, message, *components) with preset `name`'s values written into the form: shown and
    editable like any value, and saved explicitly."""
    from lorakiln.config.load import route_flat_keys
    from lorakiln.config.presets import PRESET_DESCRIPTIONS, get_preset

    if not name:
        return (extra, "choose a preset first", *components)
    try:
        before = form_values(extra, components)
        values = dict(before)
        for section, table in route_flat_keys(get_preset(name)).items():
            values |= {f"{section}.{key}": value for key, value in table.items()}
    except LorakilnError as err:
        return (extra, f"error: {err}", *components)
    values.pop("preset", None)  # its values are now in the form itself
    new_extra, shown = _split(values)
    changed = changes(before, values)
    return (new_extra, f"applied preset {name}: {PRESET_DESCRIPTIONS.get(name, '')}; changed "
            + ("; ".join(changed) if changed else "nothing") + " (Save or Start keeps it)", *shown)


def save_form(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> str:
    """Validate (config and sandbox) and write the run TOML, saying which values changed; a bad
    value is reported by its key and nothing is written."""
    try:
        file = toml_path(box, path)
        values = form_values(extra, components)
        check_values(box, values, file)
        before = _saved_values(file)
        save_run_toml(file, values)
        after = load_run_toml(file)
    except LorakilnError as err:
        return f"error: {err}"
    if before is None:
        return f"saved {file.name} (new file)"
    changed = changes(before, after)
    return f"saved {file.name}: " + ("; ".join(changed) if changed else "no changes")


def _saved_values(file: Path) -> dict[str, Any] | None:
    try:
        return load_run_toml(file) if file.is_file() else None
    except (OSError, ValueError, LorakilnError):
        return None  # an unreadable file: everything counts as changed


def total_steps(box: Sandbox, path: str, extra: dict[str, Any], *components: Any, processes: Any = 1) -> str:
    """The trainer's step arithmetic for the form as it is now (relative paths from the TOML's folder),
    on `processes` processes; the dataset is only counted when the sandbox allows its folder."""
    try:
        file = toml_path(box, path)
        values = form_values(extra, components)
        check_values(box, values, file)
        count = process_count(processes)
    except LorakilnError as err:
        return f"error: {err}"
    return step_summary(values, file.parent, count)


#: The most processes the form accepts (one per GPU: 8 per machine is the usual most, 64 is generous).
MAX_PROCESSES = 64


def process_count(value: Any) -> int:
    """The form's "processes" field as a whole number from 1 to `MAX_PROCESSES`, or a message."""
    try:
        count = float(1 if value in (None, "") else value)
    except (TypeError, ValueError):
        raise LorakilnError(f"processes: {value!r} is not a number; give 1 (one process) or one per GPU") from None
    if count != int(count) or not 1 <= count <= MAX_PROCESSES:
        raise LorakilnError(f"processes: {value!r} must be a whole number from 1 to {MAX_PROCESSES} (one per GPU)")
    return int(count)
