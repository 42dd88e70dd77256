"""Resolve the config's `pretrained_model` into a loaded `ModelBundle`.

`random:sd15` / `random:sdxl` are the full architectures with random weights, for benchmarks.
`tiny:sd1` / `tiny:sdxl` name the tiny SD-1.x-shaped model (tests, quickstart): it is built once from
config, deterministically, into the user cache and then loaded through the ordinary folder
loader, so it exercises exactly the code path a real model takes.

It lives in `models` because training, generation, the UI and ZipLoRA all turn a config's model
name into a bundle the same way; none of them may own it for the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lorakiln.models.bundle import ModelBundle

TINY_PREFIX = "tiny:"
#: SD 1.5's full architecture with random weights: real op counts without a download (bench/).
#: Bump when `models/tiny*.py` changes what a tiny model contains.
TINY_MODEL_VERSION = 1
RANDOM_SD15 = "random:sd15"
RANDOM_SDXL = "random:sdxl"


def cache_home() -> Path:
    """`$LORAKILN_HOME`, else `~/.cache/lorakiln`."""
    return Path(os.environ.get("LORAKILN_HOME") or Path.home() / ".cache" / "lorakiln")


def ensure_tiny_model(name: str) -> Path:
    """Build the named tiny model into the cache on first use (atomically) and return its folder."""
    from lorakiln.errors import ModelLoadError
    from lorakiln.models.tiny import save_tiny_sd1_diffusers
    from lorakiln.models.tiny_sdxl import save_tiny_sdxl_diffusers

    builders = {"sd1": save_tiny_sd1_diffusers, "sdxl": save_tiny_sdxl_diffusers}
    if name not in builders:
        raise ModelLoadError(f"unknown tiny model 'tiny:{name}'; valid: "
                             + ", ".join(f"tiny:{n}" for n in builders))
    # The version is part of the name: a changed builder never reuses an old cached model.
    folder = cache_home() / "models" / f"tiny-{name}-v{TINY_MODEL_VERSION}-seed0"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        builders[name](tmp, seed=0)
        missing = [part for part in ("unet", "vae", "text_encoder") if not any((tmp / part).glob("*.safetensors"))]
        if missing:  # transformers/diffusers skip writing on ranks other than 0 of a process group
            raise ModelLoadError(f"tiny:{name}: building the model wrote no weights for {', '.join(missing)} "
                                 "(was it built inside a multi-process run, on a process other than rank 0?); "
                                 "build it once with `lorakiln train` on one process, then launch")
        if not folder.exists():
            try:
                tmp.rename(folder)
            except OSError:  # another process (of a multi-process run) put the same model there first
                if not (folder / "model_index.json").is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_configured_model(source: str, *, vae: str | None = None, config_dir: str | None = None,
                          allow_pickle: bool = False) -> ModelBundle:
    """Load the base model a run config names."""
    from lorakiln.models.loading import load_base_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if source == RANDOM_SD15:
        from lorakiln.models.sd15_random import build_sd15_random

        return build_sd15_random(device=device)
    if source == RANDOM_SDXL:
        from lorakiln.models.sdxl_random import build_sdxl_random

        return build_sdxl_random(device=device)
    if source.startswith(TINY_PREFIX):
        folder = ensure_tiny_model(source[len(TINY_PREFIX):])
        bundle = load_base_model(str(folder), vae=vae)
        bundle.name = source.replace(":", "-")
        return bundle
    return load_base_model(source, vae=vae, config_dir=config_dir, allow_pickle=allow_pickle)
