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

The base model is checked for what the loader will need: a single file must be an SD 1.x or SDXL
checkpoint by its tensor names (`models.detect.detect_family`, read from the header), a folder a
diffusers model of one of those families (`model_index.json`, `unet/config.json`). What is not a
path: `toy`, `tiny:<family>`, `random:<family>` (built-in models) and a hub id `owner/name` that
names nothing on disk (`models.hub_id.looks_like_hub_id`, the rule the loader uses too). A hub id
must be in the local Hugging Face cache unless the hub can be downloaded from now: offline
(``HF_HUB_OFFLINE``) or with the hub out of reach (one probe, at most 3 s) the run would fail
when the model loads, so the dry run says so, with the loader's advice (`models.hub_download`);
online, the hub must have the repo (`hub_access.missing_repo`), which catches a mistyped relative
folder such as `models/sd15` that only looks like `owner/name`.
`describe_model` is the dry run's one-line summary of what will be loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakiln.config.schema import RunConfig
from lorakiln.config.weights_format import sniff_weights
from lorakiln.errors import ConfigError, LorakilnError, ModelLoadError
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
        found = check_lora_file("network.network_weights", cfg.network.network_weights)
        if not found and cfg.train.mode == "lora":
            from lorakiln.networks.weights_plan import check_network_weights

            found = [PreflightFinding(sev, "network.network_weights", msg)
                     for sev, msg in check_network_weights(cfg.network)]
        out += found
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
        found = _check_weights_file(key, path, allow_pickle)
        if not found and builtin_ok and path.suffix.lower() == ".safetensors":
            found = _check_checkpoint_family(key, path)
        return found
    if looks_like_hub_id(value):
        return check_hub_model(key, value, allow_pickle, vae=not builtin_ok)
    return [PreflightFinding("error", key, f"{value!r} does not exist (no such file or folder, and not a hub id "
                                           "`owner/name`); check the path, which is relative to the run TOML")]


def check_hub_model(key: str, repo_id: str, allow_pickle: bool, *, vae: bool) -> list[PreflightFinding]:
    """A hub id: fine when cached or when the hub can be downloaded from now; otherwise the
    loader's own message (offline, or the probe's reason, and what to do instead)."""
    from lorakiln.models.hub_access import hub_host, hub_offline, hub_unreachable, missing_repo
    from lorakiln.models.hub_download import (
        HUB_ALLOW,
        VAE_HUB_ALLOW,
        hub_model_cached,
        missing_hub_model,
        offline_why,
    )

    if hub_model_cached(repo_id, vae=vae) is not None:
        return []
    offline = hub_offline()
    reason = None if offline else hub_unreachable()
    if not offline and reason is None:
        if (missing := missing_repo(repo_id)) is not None:  # e.g. a mistyped relative folder `models/sd15`
            return [PreflightFinding("error", key, (
                f"{repo_id!r} is neither a file or folder here (relative paths are relative to the run TOML) nor a "
                f"model on the Hugging Face hub ({hub_host()} answers {missing}: no such repo, or a private one "
                "this machine has no token for: `hf auth login`); check the path or the hub id"))]
        return []  # downloaded when the run loads the model
    what, allow = ("VAE", VAE_HUB_ALLOW) if vae else ("base model", HUB_ALLOW)
    return [PreflightFinding("error", key, missing_hub_model(repo_id, what, offline_why(reason, offline=offline),
                                                             allow=allow, allow_pickle=allow_pickle))]


def _check_checkpoint_family(key: str, path: Path) -> list[PreflightFinding]:
    """A single-file base model must be SD 1.x or SDXL, told by its tensor names as the loader
    tells it (`models.detect.detect_family`): a FLUX, SD 3, SD 2.x or refiner checkpoint, a VAE or
    a LoRA given as the base model is refused here, not after minutes of loading."""
    from lorakiln.models.detect import detect_family
    from lorakiln.safetensors_check import read_layout

    try:
        detect_family(read_layout(path).tensors, source=str(path))
    except ModelLoadError as exc:
        return [PreflightFinding("error", key, f"{exc} lorakiln trains LoRAs for Stable Diffusion 1.x and SDXL.")]
    except LorakilnError:
        return []  # a damaged file was already reported by _check_weights_file
    return []


#: `UNet2DConditionModel.__init__` defaults of the keys families are told apart by (diffusers),
#: for a `unet/config.json` that leaves one out; the loader reads the same defaults from diffusers.
_UNET_DEFAULTS = {"use_linear_projection": False, "addition_embed_type": None}


def _check_folder_family(key: str, folder: Path) -> list[PreflightFinding]:
    """A diffusers base-model folder: `unet/config.json` present and, with `model_index.json`, a
    pipeline of a family lorakiln trains (`models.detect.detect_family_from_config`)."""
    import json

    from lorakiln.models.detect import detect_family_from_config
    from lorakiln.models.family import FAMILIES

    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        return [PreflightFinding("error", key, f"diffusers folder {folder}: unet/config.json is missing; pass the "
                                               "whole model folder (model_index.json, unet/, vae/, text_encoder/, "
                                               "tokenizer/, scheduler/)")]
    try:
        index = folder / "model_index.json"
        pipeline = json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.is_file() else None
        config = json.loads(unet_config.read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError) as exc:
        return [PreflightFinding("error", key, f"diffusers folder {folder}: cannot read its config ({exc})")]
    keys = {k for family in FAMILIES.values() for k, _ in family.unet_config_match}
    config = {**{k: _UNET_DEFAULTS.get(k) for k in keys}, **config}
    try:
        detect_family_from_config(config, pipeline_class=pipeline, source=str(folder))
    except ModelLoadError as exc:
        return [PreflightFinding("error", key, f"{exc} lorakiln trains LoRAs for Stable Diffusion 1.x and SDXL.")]
    return []


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
        if found := _check_folder_family(key, folder):
            return found
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


#: How the dry run names each family.
_FAMILY_LABELS = {"sd1": "SD 1.x", "sdxl": "SDXL"}


def describe_model(cfg: RunConfig) -> str:
    """One line for `--dry-run`: what `model.pretrained_model` is and where it comes from. Call
    after `preflight` passed (a broken source was refused there); never raises."""
    value = cfg.model.pretrained_model
    if _builtin(value):
        return f"base model: {value} (built into lorakiln)"
    path = Path(value).expanduser()
    if path.is_file():
        size = path.stat().st_size
        shown = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
        return f"base model: {_file_family(path)}single-file checkpoint, {shown} ({path})"
    if path.is_dir():
        return f"base model: {_folder_family(path)}diffusers folder {path}"
    from lorakiln.models.hub_access import hub_host
    from lorakiln.models.hub_download import hub_model_cached

    cached = hub_model_cached(value)
    if cached is not None:
        return f"base model: hub id {value}, in the local Hugging Face cache ({cached})"
    return f"base model: hub id {value}, not cached yet: downloaded from {hub_host()} when the run starts"


def _file_family(path: Path) -> str:
    """"SD 1.x " / "SDXL " for a safetensors checkpoint, "" when its header cannot tell."""
    from lorakiln.models.detect import detect_family
    from lorakiln.safetensors_check import read_layout

    try:
        return f"{_FAMILY_LABELS.get(detect_family(read_layout(path).tensors).name, '')} "
    except LorakilnError:
        return ""


def _folder_family(folder: Path) -> str:
    """"SD 1.x " / "SDXL " from `model_index.json`'s pipeline class, "" when it has none."""
    import json

    from lorakiln.models.family import FAMILIES

    try:
        pipeline = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return ""
    names = {family.pipeline_class: _FAMILY_LABELS.get(family.name, family.name) for family in FAMILIES.values()}
    return f"{names[pipeline]} " if pipeline in names else ""
