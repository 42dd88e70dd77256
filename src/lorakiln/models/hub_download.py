"""Base models and VAEs named by hub id: from the local cache, or downloaded only when the hub answers.

`huggingface_hub.snapshot_download` on a machine that cannot reach the hub retries every
request before it falls back to the cache or fails, which takes minutes behind a firewall that
swallows packets. So, as for caption models (`captioning.model_source`), the order is:

1. offline (``HF_HUB_OFFLINE`` or ``local_files_only=True``): the local cache only, one call
   with ``local_files_only=True``, no network;
2. otherwise one probe of the hub (`hub_access.hub_unreachable`, ≤ 3 s). Out of reach: the
   cached snapshot is used if there is one, else the error comes at once;
3. reachable: an ordinary `snapshot_download` (which also picks up a newer revision).

Every failure is a `ModelLoadError` with the same advice: why, the cache that was searched, a
local diffusers folder or single file instead (with the ``hf download`` command that makes
one), and ``HF_HUB_OFFLINE=1`` for machines without internet.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from lorakiln.errors import ModelLoadError
from lorakiln.models.hub_access import (
    cached_files,
    hub_cache_dir,
    hub_host,
    hub_offline,
    hub_unreachable,
    offline_advice,
)

__all__ = ["HUB_ALLOW", "HUB_IGNORE", "VAE_HUB_ALLOW", "download_command", "fetch_snapshot", "hub_model_cached",
           "ignore_patterns", "missing_hub_model", "offline_why"]

#: What a diffusers SD repo download needs; the rest (root single files, safety checker,
#: fp16/EMA variants, flax/onnx weights) is gigabytes the trainer never reads.
HUB_ALLOW = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*",
             "tokenizer_2/*", "scheduler/*"]
HUB_IGNORE = ["*.fp16.*", "*non_ema*", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb",
              "*openvino*"]
#: A VAE repo (`config.json` + weights at the root) or a whole pipeline's `vae/`.
VAE_HUB_ALLOW = ["config.json", "diffusion_pytorch_model.*", "vae/*"]


def ignore_patterns(allow_pickle: bool) -> list[str]:
    """`HUB_IGNORE`, plus pickled ``*.bin`` weights unless pickles are allowed."""
    return HUB_IGNORE + ([] if allow_pickle else ["*.bin"])


def hub_model_cached(repo_id: str, *, vae: bool = False) -> Path | None:
    """The cached snapshot folder of `repo_id` when its index file (``model_index.json``, or a
    VAE's ``config.json`` / ``vae/config.json``) is in the local cache, else None. No network."""
    cache_dir = hub_cache_dir()
    for index in (["config.json", "vae/config.json"] if vae else ["model_index.json"]):
        found = cached_files(repo_id, [index], cache_dir)
        if found:
            return found[0].parent.parent if index.startswith("vae/") else found[0].parent
    return None


def download_command(repo_id: str, allow: Sequence[str], ignore: Sequence[str]) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that fetches what the loader reads into
    ``models/<name>``, a folder to pass instead of the hub id; quoted for a POSIX shell."""
    parts = ["hf", "download", repo_id]
    for pattern in allow:
        parts += ["--include", pattern]
    for pattern in ignore:
        parts += ["--exclude", pattern]
    parts += ["--local-dir", f"models/{repo_id.rsplit('/', 1)[-1]}"]
    return shlex.join(parts)


def missing_hub_model(repo_id: str, what: str, why: str, *, allow: Sequence[str] = HUB_ALLOW,
                      allow_pickle: bool = False, cache_searched: bool = True) -> str:
    """One message for every way a hub model can be missing (see the module docstring); `why`
    follows "from the Hugging Face hub" (": <reason>" or " (offline: …)"). `cache_searched`:
    the local cache was looked in and lacks the model (not so after a failed download)."""
    command = download_command(repo_id, allow, ignore_patterns(allow_pickle))
    where = (f"It is not in the local Hugging Face cache ({hub_cache_dir()}) and no" if cache_searched else "No")
    return (f"could not get the {what} {repo_id!r} from the Hugging Face hub{why}. {where} local file or folder "
            f"named {repo_id!r} exists either; pass a local diffusers folder or a single-file .safetensors "
            f"checkpoint instead of the hub id. To make such a folder, run `{command}` on a computer with internet "
            f"and copy that folder here. {offline_advice()}").rstrip()


def offline_why(reason: str | None, *, offline: bool) -> str:
    """The `why` of `missing_hub_model` when nothing may be downloaded: `offline` mode
    (``HF_HUB_OFFLINE`` or ``local_files_only``), or `reason` (the probe's answer) when the hub
    is out of reach."""
    if offline or reason is None:
        switch = "HF_HUB_OFFLINE is set" if hub_offline() else "local_files_only"
        return f" (offline: {switch}, so only the local Hugging Face cache was searched)"
    return f": this machine cannot reach the hub ({hub_host()}): {reason}"


def fetch_snapshot(repo_id: str, *, allow: Sequence[str], ignore: Sequence[str], local_files_only: bool | None,
                   what: str = "base model") -> Path:
    """The local folder holding `repo_id`'s `allow`ed files, from the cache or downloaded (see the
    module docstring). `local_files_only=None` follows ``HF_HUB_OFFLINE``."""
    from huggingface_hub import snapshot_download

    cache_dir = hub_cache_dir()
    kwargs = {"allow_patterns": list(allow), "ignore_patterns": list(ignore), "cache_dir": str(cache_dir)}
    allow_pickle = "*.bin" not in ignore
    offline = hub_offline() if local_files_only is None else local_files_only
    reason = None if offline else hub_unreachable()
    if offline or reason is not None:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
        except Exception:  # not cached (LocalEntryNotFoundError), or a cache entry without this revision
            why = offline_why(reason, offline=offline)
            raise ModelLoadError(missing_hub_model(repo_id, what, why, allow=allow, allow_pickle=allow_pickle)) from None
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as exc:  # network, auth (gated repo), missing repo: all the user's to fix
        detail = " ".join(str(exc).split()).rstrip(".")
        raise ModelLoadError(missing_hub_model(repo_id, what, f": {type(exc).__name__}: {detail}", allow=allow,
                                               allow_pickle=allow_pickle, cache_searched=False)) from exc
