"""`lorakiln config import`: bring settings from kohya_ss, sd-scripts and diffusers.

People arrive with a working setup elsewhere: a kohya_ss GUI config JSON, an sd-scripts
`--config_file` TOML or `train_network.py` command, or a diffusers training command copied
from a blog post. Retyping those as a lorakiln TOML loses settings silently; importing them
keeps every value that has a lorakiln meaning and lists every one that does not, with why.

Modules: `cmdline` (pasted shell text → flags), `diffusers_cli`, `sdscripts` + `kohya_tables`,
`kohya_gui` (the mappings), `draft` (the config being built and its account), `emit` (the
commented TOML). The result is checked with `build_config`, the loader every run goes through.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.config.importers.cmdline import map_launcher, parse_command
from lorakiln.config.importers.draft import Draft
from lorakiln.config.importers.emit import render
from lorakiln.errors import ConfigError

#: Format name → what it reads (for errors and the emitted header).
FORMATS: dict[str, str] = {
    "kohya-gui": "kohya_ss GUI config JSON, as saved from its LoRA tab",
    "sd-scripts": "kohya sd-scripts --config_file TOML or train_network.py command line",
    "diffusers": "diffusers training command line, accelerate launch train_dreambooth_lora*.py",
}
SD_SCRIPTS = ("train_network.py", "sdxl_train_network.py")
_DIFFUSERS_FLAGS = {"rank", "instance_prompt", "dataset_name", "instance_data_dir", "snr_gamma",
                    "train_text_encoder_ti", "pretrained_vae_model_name_or_path", "validation_prompt"}
_SD_SCRIPTS_FLAGS = {"network_module", "network_dim", "network_alpha", "optimizer_type", "max_train_epochs",
                     "output_name", "save_model_as", "caption_extension", "unet_lr"}
#: Keys holding paths, checked for relative ones (the header explains how they resolve).
_PATH_KEYS = ("model.pretrained_model", "model.vae", "model.config_dir", "data.train_data_dir",
              "prior.class_data_dir", "network.network_weights", "output.output_dir", "output.logging_dir")


@dataclass
class ImportResult:
    """The imported config: its TOML text, the account behind it, and whether it validates."""

    fmt: str
    draft: Draft
    text: str
    #: `build_config`'s complaint when the source lacks something lorakiln requires, else None.
    problem: str | None


def read_source(arg: str) -> tuple[str, str]:
    """(text, name) for a file path, `-` (stdin) or the command text itself."""
    if arg == "-":
        return sys.stdin.read(), "standard input"
    path = Path(arg).expanduser()
    if "\n" not in arg and path.is_file():
        try:
            return path.read_text(encoding="utf-8-sig"), path.name
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
    if arg.lstrip().startswith("--") or (" --" in arg):
        return arg, "the command text given"
    raise ConfigError(f"{arg!r} is neither a file nor a command line with --options")


def _is_command(text: str) -> bool:
    return any(line.strip().startswith(("--", "accelerate ", "python")) or " --" in line
               for line in text.splitlines() if not line.strip().startswith("#"))


def detect_format(text: str) -> str:
    """Guess the format of `text`; a ConfigError lists the supported ones when it cannot."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "kohya-gui"
    if _is_command(text):
        cmd = parse_command(text)
        if cmd.script in SD_SCRIPTS:
            return "sd-scripts"
        if cmd.script is not None:
            return "diffusers"
        names = {f.name for f in cmd.flags}
        votes = len(names & _DIFFUSERS_FLAGS), len(names & _SD_SCRIPTS_FLAGS)
        if votes[0] != votes[1]:
            return "diffusers" if votes[0] > votes[1] else "sd-scripts"
    else:
        try:
            tomllib.loads(text)
            return "sd-scripts"
        except tomllib.TOMLDecodeError:
            pass
    listed = "; ".join(f"{name}: {what}" for name, what in FORMATS.items())
    raise ConfigError(f"cannot tell what kind of config this is. Supported formats: {listed}. "
                      "Name one with --format.")


def _load_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON ({err}); a kohya_ss GUI config is a JSON object") from None
    if not isinstance(data, dict):
        raise ConfigError("a kohya_ss GUI config is a JSON object of settings")
    return data


def _sd_scripts_source(text: str, draft: Draft) -> tuple[dict[str, Any], Any]:
    """sd-scripts options from a TOML or a command line, and how to show each as written."""
    from lorakiln.config.importers.sdscripts import flatten_sections, toml_label

    if not _is_command(text):
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"not valid TOML ({err})") from None
        if isinstance(raw.get("model"), dict) and "pretrained_model" in raw["model"]:
            raise ConfigError("this is already a lorakiln run config; use it as it is")
        if "datasets" in raw:
            draft.skip("[[datasets]]", "sd-scripts dataset configs are not read: point data.train_data_dir "
                       "at the images")
            raw.pop("datasets")
            raw.pop("general", None)
        args = flatten_sections(raw)
        return args, toml_label(args)
    cmd = parse_command(text)
    draft.warnings += cmd.warnings
    map_launcher(cmd, draft)
    for word in cmd.stray:
        draft.skip(word, "not an option (argparse would reject it)")
    args = {f.name: True if not f.values else f.values[0] if len(f.values) == 1 else list(f.values)
            for f in cmd.flags}
    texts = {f.name: f.text() for f in cmd.flags}
    return args, lambda name: texts.get(name, f"--{name}")


def _relative_paths(draft: Draft) -> None:
    from lorakiln.models.hub_id import looks_like_hub_id

    relative = []
    for dotted in _PATH_KEYS:
        value = draft.get(dotted)
        if not isinstance(value, str) or value.startswith(("tiny:", "random:", "~")) or Path(value).is_absolute():
            continue
        if dotted.startswith("model.") and looks_like_hub_id(value) and not Path(value).exists():
            continue
        relative.append(f"{dotted} = {value!r}")
    if relative:
        draft.header.append("Relative paths are kept as written (" + ", ".join(relative) + "). lorakiln "
                            "resolves them against this file's folder, the old tool against the folder it "
                            "ran in: keep this file there, or make them absolute.")


def _missing(draft: Draft) -> str | None:
    """What lorakiln requires that the source did not say (a base model, the training images)."""
    missing = []
    if not draft.has("model.pretrained_model"):
        missing.append("the source names no base model: set model.pretrained_model")
    if not (draft.has("data.train_data_dir") or draft.has("data.dataset_name")):
        missing.append("the source names no training images: set data.train_data_dir")
    return "; ".join(missing) or None


def import_config(text: str, *, source_name: str = "(text)", fmt: str = "auto",
                  base_dir: Path | None = None) -> ImportResult:
    """Import `text` (format `fmt`, or detected) into a run TOML checked with `build_config`.

    `base_dir` is the folder the TOML will live in: relative paths resolve against it, and it
    is where local folders (a `--dataset_name` folder, regularisation images) are looked for.
    """
    from lorakiln.config.load import build_config

    base_dir = base_dir or Path.cwd()
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)} (or auto)")
    draft = Draft()
    if fmt == "kohya-gui":
        from lorakiln.config.importers.kohya_gui import map_kohya_gui

        map_kohya_gui(_load_json(text), draft, base_dir)
    elif fmt == "sd-scripts":
        from lorakiln.config.importers.sdscripts import map_sd_scripts

        args, label = _sd_scripts_source(text, draft)
        map_sd_scripts(args, draft, base_dir, label)
    else:
        from lorakiln.config.importers.diffusers_cli import map_diffusers

        cmd = parse_command(text)
        draft.warnings += cmd.warnings
        map_diffusers(cmd, draft, base_dir)
    _relative_paths(draft)
    problem = _missing(draft)
    if problem is None:
        try:
            build_config(draft.raw(), source=f"imported from {source_name}", base_dir=base_dir)
        except ConfigError as err:
            problem = str(err)
    if problem:
        draft.header.append(f"Does not validate yet; complete it: {problem}")
    return ImportResult(fmt, draft, render(draft, source=source_name, fmt_label=FORMATS[fmt]), problem)
