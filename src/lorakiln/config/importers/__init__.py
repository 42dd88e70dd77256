"""`lorakiln config import`: bring settings from kohya_ss, sd-scripts and diffusers.

People arrive with a working setup elsewhere: a kohya_ss GUI config JSON, an sd-scripts
`--config_file` TOML or `train_network.py` command, or a diffusers training command copied
from a blog post. Retyping those as a lorakiln TOML loses settings silently; importing them
keeps every value that has a lorakiln meaning and lists every one that does not, with why.

Modules: `cmdline` (pasted shell text → flags), `diffusers_cli`, `sdscripts` + `kohya_tables`,
`kohya_gui` (the mappings), `network_map` (the one kohya/LyCORIS network mapping they share),
`dataset_config` (sd-scripts `--dataset_config` TOMLs), `families` (model families refused),
`paths` (header notes on relative and Windows paths), `draft` (the config being built and its
account), `emit` (the commented TOML). The result is checked with `build_config`, the loader
every run goes through.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.config.importers.cmdline import CommandLine, map_launcher, parse_command
from lorakiln.config.importers.draft import Draft
from lorakiln.config.importers.emit import render
from lorakiln.config.importers.families import refuse_other_families
from lorakiln.errors import ConfigError

#: Format name → what it reads (for errors and the emitted header).
FORMATS: dict[str, str] = {
    "kohya-gui": "kohya_ss GUI config JSON, as saved from its LoRA tab",
    "sd-scripts": "kohya sd-scripts --config_file TOML, --dataset_config TOML or train_network.py command line",
    "diffusers": "diffusers training command line, accelerate launch train_dreambooth_lora*.py",
}
SD_SCRIPTS = ("train_network.py", "sdxl_train_network.py")
_DIFFUSERS_FLAGS = {"rank", "instance_prompt", "dataset_name", "instance_data_dir", "snr_gamma",
                    "train_text_encoder_ti", "pretrained_vae_model_name_or_path", "validation_prompt"}
_SD_SCRIPTS_FLAGS = {"network_module", "network_dim", "network_alpha", "optimizer_type", "max_train_epochs",
                     "output_name", "save_model_as", "caption_extension", "unet_lr"}


@dataclass
class ImportResult:
    """The imported config: its TOML text, the account behind it, and whether it validates."""

    fmt: str
    draft: Draft
    text: str
    #: `build_config`'s complaint when the source lacks something lorakiln requires, else None.
    problem: str | None


def source_file(arg: str) -> Path | None:
    """The file `arg` names, or None for `-`, command text or a missing file (a long command
    line is no file name: the OS refuses it as too long, which is not an error here)."""
    if arg == "-" or "\n" in arg:
        return None
    path = Path(arg).expanduser()
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def read_source(arg: str) -> tuple[str, str]:
    """(text, name) for a file path, `-` (stdin) or the command text itself."""
    if arg == "-":
        return sys.stdin.read(), "standard input"
    path = source_file(arg)
    if path is not None:
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


def _sd_scripts_source(text: str, draft: Draft) -> tuple[dict[str, Any], Any, bool]:
    """sd-scripts options from a TOML or a command line, how to show each as written, and whether
    the source is a dataset config alone. A dataset config (`[general]` / `[[datasets]]`) is
    folded into the options it sets."""
    from lorakiln.config.importers.sdscripts import flatten_sections, toml_label

    if not _is_command(text):
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"not valid TOML ({err})") from None
        if isinstance(raw.get("model"), dict) and "pretrained_model" in raw["model"]:
            raise ConfigError("this is already a lorakiln run config; use it as it is")
        dataset = {k: raw.pop(k) for k in ("general", "datasets") if k in raw} if "datasets" in raw else {}
        args = flatten_sections(raw)
        refuse_other_families(args)
        plain = toml_label(args)
        if not dataset:
            return args, plain, False
        from lorakiln.config.importers.dataset_config import merge_dataset_config

        alone = not args
        if alone:
            draft.header.append("This is an sd-scripts dataset config alone: it sets the data, resolution and "
                                "batch size; the base model and training options (rank, learning rates, steps) "
                                "come from the training config or command that uses it. Import that one, or "
                                "add them here.")
        labels: dict[str, str] = {}
        merge_dataset_config(dataset, args, labels, draft)
        return args, lambda name: labels.get(name) or plain(name), alone
    cmd = _command(text, draft)
    map_launcher(cmd, draft)
    for word in cmd.stray:
        draft.skip(word, "not an option (argparse would reject it)")
    texts = {f.name: f.text() for f in cmd.flags}
    return _flag_values(cmd), lambda name: texts.get(name, f"--{name}"), False


def _flag_values(cmd: CommandLine) -> dict[str, Any]:
    return {f.name: True if not f.values else f.values[0] if len(f.values) == 1 else list(f.values)
            for f in cmd.flags}


def _command(text: str, draft: Draft) -> CommandLine:
    """Parse a command, refuse other model families, and account for its text's problems."""
    cmd = parse_command(text)
    refuse_other_families(_flag_values(cmd), cmd.script)
    draft.warnings += cmd.warnings
    for flag, value in cmd.placeholders:
        draft.skip(f"--{flag}={value}", "a placeholder from the documentation: fill in your own value")
    return cmd


def _missing(draft: Draft) -> str | None:
    """What lorakiln requires that the source did not say (a base model, the training images)."""
    missing = []
    if not draft.has("model.pretrained_model"):
        missing.append("the source names no base model: set model.pretrained_model")
    if not (draft.has("data.train_data_dir") or draft.has("data.dataset_name")):
        missing.append("the source names no training images: set data.train_data_dir")
    return "; ".join(missing) or None


def import_config(text: str, *, source_name: str = "(text)", fmt: str = "auto",
                  base_dir: Path | None = None, source_path: Path | None = None) -> ImportResult:
    """Import `text` (format `fmt`, or detected) into a run TOML checked with `build_config`.

    `base_dir` is the folder the TOML will live in: relative paths resolve against it, and it
    is where local folders (a `--dataset_name` folder, regularisation images) are looked for.
    `source_path` is the file `text` was read from: a dataset config it names is looked for
    next to it. A config for a model family lorakiln does not train is a `ConfigError`.
    """
    from lorakiln.config.importers.paths import path_notes
    from lorakiln.config.load import build_config

    base_dir = base_dir or Path.cwd()
    source_dir = source_path.resolve().parent if source_path else None
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)} (or auto)")
    draft = Draft()
    if fmt == "kohya-gui":
        from lorakiln.config.importers.kohya_gui import map_kohya_gui

        gui = _load_json(text)
        refuse_other_families(gui)
        map_kohya_gui(gui, draft, base_dir, source_dir)
    elif fmt == "sd-scripts":
        from lorakiln.config.importers.sdscripts import map_sd_scripts

        args, label, dataset_only = _sd_scripts_source(text, draft)
        map_sd_scripts(args, draft, base_dir, label, source_dir=source_dir, dataset_only=dataset_only)
    else:
        from lorakiln.config.importers.diffusers_cli import map_diffusers

        map_diffusers(_command(text, draft), draft, base_dir, source_dir)
    path_notes(draft, [p for p in (source_dir, base_dir) if p is not None])
    problem = _missing(draft)
    if problem is None:
        try:
            build_config(draft.raw(), source=f"imported from {source_name}", base_dir=base_dir)
        except ConfigError as err:
            problem = str(err)
    if problem:
        draft.header.append(f"Does not validate yet; complete it: {problem}")
    return ImportResult(fmt, draft, render(draft, source=source_name, fmt_label=FORMATS[fmt]), problem)
