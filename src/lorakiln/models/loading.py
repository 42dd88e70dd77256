"""`load_base_model`: one entry point from whatever the user names to a `ModelBundle`.

Accepted sources, checked in this order:
1. `tiny:sd1` / `tiny:sdxl` — the tiny test models, built in memory (config docs, quickstart);
2. an existing folder — a diffusers model (`model_index.json` or `unet/`);
3. an existing file — a single-file LDM (SD 1.x) or SGM (SDXL) checkpoint, `.safetensors`
   (pickles only on opt-in);
4. `org/name` — a hub repo, fetched to the HF cache unless offline, then loaded as a folder;
   offline or with the hub out of reach it comes from the cache or fails within seconds
   (`hub_download`).
Anything else is a "not found" error that names the path.

The family (SD 1.x or SDXL) is detected from the data, and everything family-specific —
text-encoder classes and subfolders, single-file prefixes and layouts, tokenizer pad tokens —
is read from its `ModelFamily` record, so the loaders below have no per-family branches.

Training always gets a `DDPMScheduler` with the model's betas and prediction type, whatever
scheduler class the folder saved (PNDM for SD 1.5, Euler for SDXL): training adds noise, it
does not sample.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from lorakiln.errors import ModelLoadError
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.clip_tokenizer import CLIP_VOCAB_SIZE, load_clip_tokenizer
from lorakiln.models.detect import detect_family, detect_family_from_config
from lorakiln.models.family import ModelFamily
from lorakiln.models.hub_download import HUB_ALLOW, VAE_HUB_ALLOW
from lorakiln.models.hub_id import looks_like_hub_id
from lorakiln.models.single_file import (
    PICKLE_SUFFIXES,
    VAE_PREFIXES,
    cast_module,
    file_configs,
    file_hints,
    pickle_refusal,
    read_checkpoint,
    text_encoder_from_state,
    text_state_dicts,
    unet_from_ldm,
    vae_from_ldm,
)
from lorakiln.models.toy import TOY_SOURCE, toy_model_path

__all__ = ["load_base_model", "load_vae", "detect_family", "sha256_file", "make_noise_scheduler"]

#: `tiny:<family>[:<seed>]`; the family names are `TINY_BUILDERS`' keys.
_TINY_SOURCE = re.compile(r"^tiny:(\w+)(?::(\d+))?$")
#: In-memory tiny model builders (module, function) per `tiny:` name.
TINY_BUILDERS: dict[str, tuple[str, str]] = {
    "sd1": ("lorakiln.models.tiny", "build_tiny_sd1_bundle"),
    "sdxl": ("lorakiln.models.tiny_sdxl", "build_tiny_sdxl_bundle"),
}


def load_base_model(
    source: str | os.PathLike[str],
    *,
    config_dir: str | os.PathLike[str] | None = None,
    vae: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> ModelBundle:
    """Load an SD 1.x or SDXL base model from a diffusers folder, a single file, a hub id or `tiny:*`.

    `config_dir` (single files only): a diffusers folder whose configs/tokenizer describe the
    file, instead of inferring them from tensor shapes. `vae`: a VAE to use instead of the
    model's (diffusers VAE folder, single-file VAE, or hub id; e.g. an fp16-fix SDXL VAE).
    `tokenizer`: a tokenizer folder, for checkpoints whose vocabulary is not CLIP's; with two
    text encoders (SDXL) it serves both, each with the family's pad token.
    `local_files_only=None` follows `HF_HUB_OFFLINE`. Every failure is a `ModelLoadError`
    naming the source.
    """
    src = os.fspath(source)
    if src == TOY_SOURCE:  # the toy world's base model shipped with lorakiln (`models/toy.py`)

        bundle = _load_single_file(toy_model_path(), config_dir=config_dir, allow_pickle=False, dtype=dtype,
                                   tokenizer=tokenizer)
        bundle.name = "toy"
        return _with_vae(bundle, vae, allow_pickle, dtype, local_files_only)
    path = Path(src).expanduser()
    if m := _TINY_SOURCE.match(src):
        bundle = _build_tiny(m[1], seed=int(m[2] or 0), dtype=dtype)
    elif path.is_dir():
        bundle = _load_folder(path, source=src, name=path.resolve().name, allow_pickle=allow_pickle,
                              dtype=dtype, tokenizer=tokenizer)
    elif path.is_file():
        bundle = _load_single_file(path, config_dir=config_dir, allow_pickle=allow_pickle, dtype=dtype,
                                   tokenizer=tokenizer)
    elif looks_like_hub_id(src):
        folder = _hub_snapshot(src, HUB_ALLOW, allow_pickle=allow_pickle, local_files_only=local_files_only)
        bundle = _load_folder(folder, source=src, name=src, allow_pickle=allow_pickle, dtype=dtype,
                              tokenizer=tokenizer)
    else:
        raise ModelLoadError(
            f"base model {src!r} not found: no such file or folder (a hub id looks like `org/name`)"
        )
    return _with_vae(bundle, vae, allow_pickle, dtype, local_files_only)


def _with_vae(bundle: ModelBundle, vae: str | os.PathLike[str] | None, allow_pickle: bool, dtype: torch.dtype,
              local_files_only: bool | None) -> ModelBundle:
    """Swap in a VAE override (`model.vae`), if any."""
    if vae is not None:
        bundle.vae = load_vae(vae, base_config=bundle.vae.config, allow_pickle=allow_pickle, dtype=dtype,
                              local_files_only=local_files_only)
        bundle.extra["vae"] = os.fspath(vae)
    return bundle


def _build_tiny(name: str, *, seed: int, dtype: torch.dtype) -> ModelBundle:
    import importlib

    if name not in TINY_BUILDERS:
        valid = ", ".join(f"tiny:{n}" for n in TINY_BUILDERS)
        raise ModelLoadError(f"unknown tiny model 'tiny:{name}'; valid: {valid}")
    module, func = TINY_BUILDERS[name]
    return getattr(importlib.import_module(module), func)(seed=seed, dtype=dtype)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, streamed (SD files are 2–7 GB): A1111's `ss_new_sd_model_hash`, and
    the source of its infotext `Model hash`. Computed once per file version and process (A1111
    keeps the same in its `cache.json`): the web UI and `grid` load one checkpoint many times, and
    a rewritten file has a new mtime or size, so it is hashed again."""
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, chunk)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int, chunk: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def make_noise_scheduler(config: dict[str, Any]) -> Any:
    """A `DDPMScheduler` from any SD scheduler config (keys DDPM does not take are dropped)."""
    from diffusers import DDPMScheduler

    from lorakiln.models.tiny import SD1_SCHEDULER_CONFIG

    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    merged = {**SD1_SCHEDULER_CONFIG, **config}
    return DDPMScheduler(**{k: v for k, v in merged.items() if k in accepted})


def _hub_snapshot(repo_id: str, allow: list[str], *, allow_pickle: bool, local_files_only: bool | None,
                  what: str = "base model") -> Path:
    """The files of `repo_id` the loader needs, from the HF cache or downloaded; fails within
    seconds when the hub cannot be reached (`hub_download.fetch_snapshot`)."""
    from lorakiln.models.hub_download import fetch_snapshot, ignore_patterns

    return fetch_snapshot(repo_id, allow=allow, ignore=ignore_patterns(allow_pickle),
                          local_files_only=local_files_only, what=what)


def _weights_kwargs(folder: Path, weights: str, allow_pickle: bool, what: str) -> dict[str, Any]:
    """`from_pretrained` kwargs for a component folder, refusing pickle-only folders by default."""
    if not folder.is_dir():
        raise ModelLoadError(f"{what}: folder {folder} is missing")
    names = {p.name for p in folder.iterdir()}
    if f"{weights}.safetensors" in names or f"{weights}.safetensors.index.json" in names:
        return {"use_safetensors": True}
    if f"{weights}.fp16.safetensors" in names:
        return {"use_safetensors": True, "variant": "fp16"}
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        if not allow_pickle:
            raise pickle_refusal(folder / pickles[0])
        return {"use_safetensors": False}
    raise ModelLoadError(f"{what}: no weights file ({weights}.safetensors) in {folder}")


def _load_folder(
    folder: Path, *, source: str, name: str, allow_pickle: bool, dtype: torch.dtype,
    tokenizer: str | os.PathLike[str] | None,
) -> ModelBundle:
    """Load a diffusers-layout folder component by component (subfolders from the family)."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index_path = folder / "model_index.json"
    if not index_path.is_file() and not (folder / "unet").is_dir():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers model (no model_index.json or unet/); "
            "pass the model's folder, or a single-file checkpoint"
        )
    model_index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    unet_cfg_path = folder / "unet" / "config.json"
    if not unet_cfg_path.is_file():
        raise ModelLoadError(f"diffusers folder {folder}: unet/config.json is missing")
    family = detect_family_from_config(json.loads(unet_cfg_path.read_text(encoding="utf-8")),
                                       pipeline_class=model_index.get("_class_name"), source=str(folder))
    what = f"diffusers folder {folder}"
    kw = {c: _weights_kwargs(folder / c, "diffusion_pytorch_model", allow_pickle, what) for c in ("unet", "vae")}
    te_kw = [_weights_kwargs(folder / c, "model", allow_pickle, what) for c in family.te_diffusers_prefixes]
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **kw["unet"])
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **kw["vae"])
        text_encoders = [
            getattr(transformers, cls).from_pretrained(folder / sub, **k)
            for cls, sub, k in zip(family.text_encoder_classes, family.te_diffusers_prefixes, te_kw, strict=True)
        ]
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load diffusers folder {folder}: {exc}") from exc
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched_path.read_text(encoding="utf-8")) if sched_path.is_file() else {}
    tok_dirs = [folder / sub if (folder / sub).is_dir() else None for sub in family.tokenizer_subfolders]
    return ModelBundle(
        family=family,
        unet=cast_module(unet, dtype).eval(),
        vae=cast_module(vae, dtype).eval(),
        text_encoders=[cast_module(te, dtype).eval() for te in text_encoders],
        tokenizers=_resolve_tokenizers(family, text_encoders, own_dirs=tok_dirs, override=tokenizer,
                                       tiny=False, source=str(folder)),
        noise_scheduler=make_noise_scheduler(sched_cfg),
        source=source,
        name=name,
        extra={"format": "diffusers", "folder": str(folder)},
    )


def _load_single_file(
    path: Path, *, config_dir: str | os.PathLike[str] | None, allow_pickle: bool, dtype: torch.dtype,
    tokenizer: str | os.PathLike[str] | None,
) -> ModelBundle:
    """Load an LDM/SGM-layout single file without any network access."""
    from lorakiln.models.tiny import TINY_TOKENIZER_NAME

    sd, metadata = read_checkpoint(path, allow_pickle=allow_pickle)
    family = detect_family(sd.keys(), source=str(path))
    text_sds = text_state_dicts(sd, family, str(path))
    configs = file_configs(sd, metadata, config_dir, str(path), family, text_sds)
    unet = unet_from_ldm(sd, configs.unet, dtype, f"U-Net of {path}")
    vae = vae_from_ldm(sd, configs.vae, dtype, f"VAE of {path}")
    del sd
    text_encoders = [
        text_encoder_from_state(te_sd, cfg, cls, dtype, f"{sub} of {path}")
        for te_sd, cfg, cls, sub in zip(text_sds, configs.text_encoders, family.text_encoder_classes,
                                        family.te_diffusers_prefixes, strict=True)
    ]
    del text_sds
    tokenizers = _resolve_tokenizers(
        family, text_encoders, own_dirs=configs.tokenizer_dirs, override=tokenizer,
        tiny=file_hints(metadata).get("tokenizer") == TINY_TOKENIZER_NAME, source=str(path),
    )
    return ModelBundle(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=make_noise_scheduler(configs.scheduler),
        source=os.fspath(path),
        name=path.stem,
        sha256=sha256_file(path),
        extra={"format": "single_file", "configs": configs.origin},
    )


def _resolve_tokenizers(
    family: ModelFamily, text_encoders: list[Any], *, own_dirs: list[Path | None],
    override: str | os.PathLike[str] | None, tiny: bool, source: str,
) -> list[Any]:
    """One tokenizer per text encoder: the `tokenizer=` folder, the model's own tokenizer folder,
    the tiny one, or the bundled CLIP BPE — checked against the encoder's vocabulary size.

    A model's own folder keeps its saved settings; any tokenizer lorakiln builds or reuses for
    several encoders gets the family's pad token (SDXL's `tokenizer_2` pads with "!").
    """
    from transformers import CLIPTokenizer

    tokenizers = []
    for index, encoder in enumerate(text_encoders):
        pad = family.tokenizer_pad_tokens[index]
        vocab_size = encoder.config.vocab_size
        own = own_dirs[index] if index < len(own_dirs) else None
        folder, kwargs = (override, {"pad_token": pad}) if override is not None else (own, {})
        if folder is not None:
            try:
                tok = CLIPTokenizer.from_pretrained(os.fspath(folder), **kwargs)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        elif tiny:
            from lorakiln.models.tiny import tiny_tokenizer

            tok = tiny_tokenizer(pad_token=pad)
        elif vocab_size == CLIP_VOCAB_SIZE:
            tok = load_clip_tokenizer(pad_token=pad)
        else:
            raise ModelLoadError(
                f"{source}: its text encoder has a {vocab_size}-token vocabulary, not CLIP's "
                f"{CLIP_VOCAB_SIZE}, so the bundled CLIP tokenizer does not fit; pass tokenizer=<folder "
                "with vocab.json and merges.txt> or config_dir=<diffusers folder with a tokenizer/>"
            )
        if len(tok) > vocab_size:
            raise ModelLoadError(
                f"{source}: the tokenizer has {len(tok)} tokens but the text encoder only {vocab_size}"
            )
        tokenizers.append(tok)
    return tokenizers


def load_vae(
    source: str | os.PathLike[str],
    *,
    base_config: Any = None,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> Any:
    """An `AutoencoderKL` from a diffusers VAE folder, a single-file VAE or a hub id.

    Single files may use LDM names (`encoder.down.0.block.0...`, optionally under
    `first_stage_model.`) or diffusers names; what shapes cannot tell (GroupNorm groups,
    scaling factor) is taken from `base_config`, the base model's VAE config.
    """
    from diffusers import AutoencoderKL

    from lorakiln.models.arch import infer_vae_config, sd15_configs
    from lorakiln.models.single_file import empty_model, load_strict, strip_prefix

    src = os.fspath(source)
    path = Path(src).expanduser()
    base = dict(base_config) if base_config is not None else sd15_configs().vae
    if not path.exists() and looks_like_hub_id(src):
        path = _hub_snapshot(src, VAE_HUB_ALLOW, allow_pickle=allow_pickle, local_files_only=local_files_only,
                             what="VAE")
    if path.is_dir():
        sub = "" if (path / "config.json").is_file() else "vae"
        kw = _weights_kwargs(path / sub if sub else path, "diffusion_pytorch_model", allow_pickle, f"VAE {src}")
        try:
            vae = AutoencoderKL.from_pretrained(path, subfolder=sub or None, torch_dtype=dtype, **kw)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load the VAE folder {path}: {exc}") from exc
        return cast_module(vae, dtype).eval()
    if not path.is_file():
        raise ModelLoadError(f"VAE {src!r} not found: no such file or folder")
    sd, _ = read_checkpoint(path, allow_pickle=allow_pickle)
    what = f"VAE {path}"
    if any(".down_blocks." in k for k in sd):  # already diffusers names
        diff = strip_prefix(sd, VAE_PREFIXES) or sd
        return load_strict(empty_model(lambda: AutoencoderKL.from_config(base)), diff, dtype, what)
    config = infer_vae_config(strip_prefix(sd, VAE_PREFIXES) or sd, base, what)
    return vae_from_ldm(sd, config, dtype, what)
