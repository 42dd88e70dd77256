"""`preflight`: everything about a run config that can be checked without loading a model.

`lorakiln train run.toml --dry-run` promised a check of the run, yet accepted a base model path
that does not exist, a pickle without `model.allow_pickle`, and a file as `output_dir` — each
surfaced only after minutes of model loading, or as a traceback. This module looks at every
path the config names, reads the header of every weights file (`weights_format.py`), checks that
`output_dir` can be written, compares the batch size with the number of samples, and checks the
kohya folder names, then raises one `ConfigError` listing every problem, so one run shows them
all. The trainer runs it too (`training.plan.describe_plan`), before the model loads. It lives
with the runs because it checks a run (its resume state, its output folders), and it imports no
torch, so `--dry-run` stays instant.

What is not a path: `toy`, `tiny:<family>`, `random:<family>` (built-in models) and a hub id
`owner/name` that names nothing on disk (`models.hub_id.looks_like_hub_id`, the rule the loader
uses too); those are left to the loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakiln.config.schema import RunConfig
from lorakiln.config.weights_format import sniff_weights
from lorakiln.errors import ConfigError, LorakilnError
from lorakiln.models.hub_id import looks_like_hub_id

Severity = Literal["error", "warning"]
#: Diffusers component folders whose weights the loader reads.
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
#: Suffixes of pickled weights in a diffusers folder (as `models.single_file.PICKLE_SUFFIXES`).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_FIX = ("pickles can run any code when loaded; use a .safetensors version, or if you trust the file set "
              "model.allow_pickle = true")


@dataclass(frozen=True)
class PreflightFinding:
    """One problem (`error`: training would fail) or caution (`warning`), with its config key."""

    severity: Severity
    key: str
    message: str

    def format(self) -> str:
        return f"{self.key}: {self.message}"


def preflight(cfg: RunConfig, log: Callable[[str], None] | None = print) -> list[PreflightFinding]:
    """Run every check; raise one `ConfigError` listing all errors; log and return the warnings."""
    findings = collect_findings(cfg)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        lines = [f"the run config has {len(errors)} problem(s), found before loading any model; fix them all "
                 "and run again:"]
        lines += [f"  - {f.format()}" for f in errors]
        raise ConfigError("\n".join(lines))
    if log:
        for finding in findings:
            log(f"warning: {finding.format()}")
    return findings


def collect_findings(cfg: RunConfig) -> list[PreflightFinding]:
    """Every finding, errors and warnings, in config order; raises nothing."""
    m = cfg.model
    out: list[PreflightFinding] = []
    out += check_model_source("model.pretrained_model", m.pretrained_model, m.allow_pickle, builtin_ok=True)
    if m.vae:
        out += check_model_source("model.vae", m.vae, m.allow_pickle, builtin_ok=False)
    if cfg.network.network_weights:
        out += check_lora_file("network.network_weights", cfg.network.network_weights)
    if cfg.train.resume:
        out += check_resume("train.resume", cfg.train.resume)
    if not cfg.data.dataset_name and cfg.data.train_data_dir:
        out += check_dataset(cfg)
    if m.config_dir and not Path(m.config_dir).expanduser().is_dir():
        out.append(PreflightFinding("error", "model.config_dir", f"{m.config_dir} is not a folder; pass a diffusers "
                                                                 "model folder whose configs describe the checkpoint"))
    if cfg.prior.with_prior_preservation and cfg.prior.class_data_dir:  # written only when images are missing
        out += check_writable_folder("prior.class_data_dir", cfg.prior.class_data_dir, "the class images",
                                     must_write=False)
    out += check_writable_folder("output.output_dir", cfg.output.output_dir, "the LoRA, samples and state")
    out += check_output_outside_dataset(cfg)
    if cfg.output.logging_dir:
        out += check_writable_folder("output.logging_dir", cfg.output.logging_dir, "the TensorBoard logs")
    return out


def _builtin(value: str) -> bool:
    return value == "toy" or value.startswith(("tiny:", "random:"))


def check_model_source(key: str, value: str, allow_pickle: bool, *, builtin_ok: bool) -> list[PreflightFinding]:
    """A base model or VAE: a built-in name, a hub id, a diffusers folder or a weights file."""
    if builtin_ok and _builtin(value):
        return []
    path = Path(value).expanduser()
    if path.is_dir():
        return _check_model_folder(key, path, allow_pickle, vae=not builtin_ok)
    if path.is_file():
        return _check_weights_file(key, path, allow_pickle)
    if looks_like_hub_id(value):
        return []  # fetched from the Hugging Face hub at load time
    return [PreflightFinding("error", key, f"{value!r} does not exist (no such file or folder, and not a hub id "
                                           "`owner/name`); check the path, which is relative to the run TOML")]


def _check_weights_file(key: str, path: Path, allow_pickle: bool) -> list[PreflightFinding]:
    """The file's real format, from its header, against its suffix and `model.allow_pickle`."""
    try:
        fmt = sniff_weights(path)
    except OSError as exc:
        return [PreflightFinding("error", key, f"{path} cannot be read ({exc.strerror or exc})")]
    suffix = path.suffix.lower()
    if fmt.kind == "pickle":
        if suffix == ".safetensors":
            return [PreflightFinding("error", key, f"{path} is named .safetensors but is {fmt.detail}; "
                                                   f"{PICKLE_FIX} (and rename it to .ckpt)")]
        if not allow_pickle:
            return [PreflightFinding("error", key, f"{path} is {fmt.detail}; {PICKLE_FIX}")]
        return []
    if fmt.kind == "safetensors":
        if suffix != ".safetensors":
            return [PreflightFinding("error", key, f"{path} is a safetensors file named {suffix or 'without a suffix'}; "
                                                   "the loader picks the reader by suffix, so rename it to "
                                                   f"{path.stem}.safetensors")]
        return []
    return [PreflightFinding("error", key, f"not a valid .safetensors file: {fmt.problem}")]


def _check_model_folder(key: str, folder: Path, allow_pickle: bool, *, vae: bool) -> list[PreflightFinding]:
    """A diffusers folder: the layout the loader needs, and no pickle-only component without opt-in."""
    if vae:
        components = [folder] if (folder / "config.json").is_file() else [folder / "vae"]
    elif (folder / "model_index.json").is_file() or (folder / "unet").is_dir():
        components = [folder / c for c in COMPONENTS if (folder / c).is_dir()]
    else:
        return [PreflightFinding("error", key, f"{folder} is a folder but not a diffusers model (no "
                                               "model_index.json or unet/); pass the model's folder or a "
                                               "single .safetensors file")]
    out: list[PreflightFinding] = []
    for component in components:
        if not component.is_dir():
            out.append(PreflightFinding("error", key, f"{folder} has no config.json or vae/ folder, so it is not a "
                                                      "diffusers VAE; pass the VAE folder or a .safetensors file"))
            continue
        names = [p.name for p in component.iterdir() if p.is_file()]
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles and not allow_pickle and not any(n.endswith(".safetensors") for n in names):
            out.append(PreflightFinding("error", key, f"{component / pickles[0]} is a pickle and the folder has no "
                                                      f".safetensors weights; {PICKLE_FIX}"))
    return out


def check_lora_file(key: str, value: str) -> list[PreflightFinding]:
    """`network.network_weights`: a readable .safetensors LoRA (pickles are never loaded there)."""
    path = Path(value).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        return [PreflightFinding("error", key, f"{value} {what}; pass the .safetensors LoRA file to start from")]
    try:
        fmt = sniff_weights(path)
    except OSError as exc:
        return [PreflightFinding("error", key, f"{path} cannot be read ({exc.strerror or exc})")]
    if fmt.kind == "pickle":
        return [PreflightFinding("error", key, f"{path} is {fmt.detail}; LoRA weights are only read from "
                                               ".safetensors files (pickles can run code); use the .safetensors "
                                               "version of this LoRA")]
    if fmt.kind != "safetensors":
        return [PreflightFinding("error", key, f"not a valid .safetensors file: {fmt.problem}")]
    return []


def check_resume(key: str, value: str) -> list[PreflightFinding]:
    """`train.resume`: the state the trainer will load, found by the trainer's own rule
    (`training.recovery.find_state`: the folder if complete, else the newest complete state an
    interrupted save left beside it, which is a warning here)."""
    from lorakiln.training.recovery import find_state

    try:
        _, note = find_state(value)
    except LorakilnError as exc:
        return [PreflightFinding("error", key, str(exc))]
    return [PreflightFinding("warning", key, note)] if note else []


def check_writable_folder(key: str, value: str, what: str, *, must_write: bool = True) -> list[PreflightFinding]:
    """A folder the run writes into: an existing writable folder, or creatable (its nearest existing
    ancestor is a writable folder). `os.access` asks the OS with the real user's rights. Without
    `must_write`, an existing folder need not be writable (the run may only read it)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return [PreflightFinding("error", key, f"{value} is a file, not a folder; {what} go into a folder: pick "
                                               "another path or move the file away")]
    if path.is_dir() and not must_write:
        return []
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [PreflightFinding("error", key, f"{value} cannot be created: {existing} is a file, not a folder")]
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        return [PreflightFinding("error", key, f"{value} {where} by this user; {what} need a writable folder")]
    return []


def check_output_outside_dataset(cfg: RunConfig) -> list[PreflightFinding]:
    """`output_dir` inside `train_data_dir` would mix samples and caches with the training images."""
    if not cfg.data.train_data_dir or cfg.data.dataset_name:
        return []
    out = Path(cfg.output.output_dir).expanduser().resolve()
    data = Path(cfg.data.train_data_dir).expanduser().resolve()
    if out == data or data in out.parents:
        return [PreflightFinding("error", "output.output_dir", f"{out} is inside data.train_data_dir {data}; sample "
                                                               "images and caches written there would be scanned as "
                                                               "training data next time: use a folder outside it")]
    return []


def check_dataset(cfg: RunConfig) -> list[PreflightFinding]:
    """Folder layout and kohya folder names (listing only, nothing decoded), and the batch size."""
    from lorakiln.data.layout_check import count_samples, folder_name_problems

    key = "data.train_data_dir"
    root = cfg.data.train_data_dir or ""
    try:
        problems = folder_name_problems(root)
        samples = count_samples(root, cfg.data.repeats)
    except LorakilnError as exc:
        return [PreflightFinding("error", key, str(exc))]
    out = [PreflightFinding("error", key, p) for p in problems]
    batch = cfg.train.train_batch_size
    if samples and batch > samples:
        out.append(PreflightFinding("warning", "train.train_batch_size", (
            f"{batch} is larger than the {samples} sample(s) per epoch (images × repeats); batches never mix "
            f"buckets, so each bucket gives one batch of at most {samples} per epoch: a step trains on fewer "
            f"samples than {batch} and there are far fewer steps than planned. Use train_batch_size ≤ {samples} "
            "(1–8 is usual for a LoRA) or add images or repeats")))
    return out
