"""VAE latent cache, in memory and/or on disk, keyed so a stale latent is never served.

Caching removes the VAE encode from every step (about +65 % of a step at
512 px). kohya keys its `.npz` files by image *path* only, so an
edited image or a different VAE silently trains on old latents. Here the key is

    sha256(image file bytes) + VAE fingerprint + bucket, resize, crop, flip + preprocess version

so any change to the pixels, the encoder or the geometry is a cache miss. Disk entries are
`.safetensors` files written atomically (a crash never leaves a half-written entry).

`encode_fn` is the caller's: it receives float32 pixels [B, 3, H, W] in [-1, 1] on the CPU and
must return latents [B, C, H/8, W/8] (move to device, cast, sample/scale as the trainer
wants). If what `encode_fn` computes changes (e.g. scaled vs unscaled latents), append that
to the fingerprint string — the cache cannot see inside the function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from lorakiln.atomic import write_bytes_atomic
from lorakiln.data.dataset import ImageItem
from lorakiln.data.images import PREPROCESS_VERSION, CropPlan, load_pixels, plan_crop

logger = logging.getLogger(__name__)

EncodeFn = Callable[[torch.Tensor], torch.Tensor]

_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the file's bytes, memoized per process by (path, mtime_ns, size).

    Hashing a 10 MB photo costs ~10 ms; doing it once per process (not once per step)
    keeps cache look-ups free, and any edit changes mtime or size and so re-hashes.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    memo_key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    with _HASH_LOCK:
        cached = _HASH_MEMO.get(memo_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(resolved, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_MEMO[memo_key] = value
    return value


def vae_fingerprint(vae: torch.nn.Module, *, samples_per_tensor: int = 256) -> str:
    """A short string that changes whenever the VAE would encode differently.

    Hashes: the class name, the config (minus diffusers' bookkeeping keys starting with "_",
    such as `_name_or_path`, so the same weights from another folder still hit), every
    parameter/buffer name with shape and dtype, and `samples_per_tensor` evenly spaced values
    of every tensor. Why that is enough: another architecture or precision changes names,
    shapes or dtypes; another checkpoint or fine-tune (e.g. sd-vae-ft-mse) moves essentially
    every weight, so sampled values differ with overwhelming probability. It is not meant to
    resist a deliberately crafted collision, and it reads a few hundred KB instead of the
    whole ~330 MB, so it is cheap even for a VAE on the GPU.
    """
    digest = hashlib.sha256(type(vae).__name__.encode())
    config = getattr(vae, "config", None)
    if config is not None:
        public = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() > samples_per_tensor:
            index = torch.linspace(0, flat.numel() - 1, samples_per_tensor, device=flat.device).long()
            flat = flat[index]
        digest.update(flat.to("cpu", torch.float32).numpy().tobytes())
    return f"vae-{digest.hexdigest()[:32]}"


class LatentCache:
    """Latents by content key; `in_memory` keeps a CPU copy, `cache_dir` persists to disk."""

    def __init__(self, vae_fingerprint: str, cache_dir: str | os.PathLike[str] | None = None, *,
                 in_memory: bool = True) -> None:
        if not vae_fingerprint:
            raise ValueError("vae_fingerprint must be a non-empty string")
        self.vae_fingerprint = vae_fingerprint
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.in_memory = in_memory or self.cache_dir is None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def key(self, item: ImageItem, plan: CropPlan) -> str:
        """The content key of `item` processed by `plan` under this cache's VAE."""
        parts: dict[str, Any] = {
            "image": file_sha256(item.path), "vae": self.vae_fingerprint, "bucket": plan.bucket,
            "resized": plan.resized_size, "crop": plan.crop_top_left, "flip": plan.flip,
            "preprocess": PREPROCESS_VERSION,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _disk_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached latent for `key`, or None; a corrupt disk entry counts as a miss."""
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir is None:
            return None
        path = self._disk_path(key)
        if not path.exists():
            return None
        try:
            latent = load_file(path)["latents"]
        except Exception as exc:  # truncated/corrupt file from an older crash or a full disk
            logger.warning("ignoring unreadable latent cache entry %s (%s); re-encoding", path, exc)
            return None
        if self.in_memory:
            self._memory[key] = latent
        return latent

    def put(self, key: str, latent: torch.Tensor, *, source: Path | None = None) -> None:
        """Store one latent [C, h, w] (copied to the CPU)."""
        latent = latent.detach().to("cpu").contiguous().clone()
        if self.in_memory:
            self._memory[key] = latent
        if self.cache_dir is not None:
            meta = {"vae": self.vae_fingerprint, "source": str(source or "")}
            write_bytes_atomic(self._disk_path(key), save({"latents": latent}, metadata=meta))

    def held(self) -> dict[str, torch.Tensor]:
        """The in-memory latents by key (what another process of the same run can adopt)."""
        return dict(self._memory)

    def adopt(self, latents: dict[str, torch.Tensor]) -> None:
        """Take latents another process encoded (same VAE, same keys); those held already stay."""
        for key, latent in latents.items():
            self._memory.setdefault(key, latent)

    def get_or_encode(self, item: ImageItem, bucket: tuple[int, int], encode_fn: EncodeFn, *,
                      flip: bool = False) -> torch.Tensor:
        """The latent of `item` centre-cropped into `bucket` (optionally flipped)."""
        return self.get_or_encode_many([item], bucket, encode_fn, flips=[flip])[0]

    def get_or_encode_many(self, items: Sequence[ImageItem], bucket: tuple[int, int],
                           encode_fn: EncodeFn, *, flips: Sequence[bool] | None = None) -> list[torch.Tensor]:
        """Latents for several images of one bucket; all misses go to `encode_fn` in ONE call.

        Only centre crops are cached: a random crop differs every step, so caching it would
        only fill the disk (kohya forbids `random_crop` with `cache_latents` for this reason).
        """
        flips = list(flips) if flips is not None else [False] * len(items)
        plans = [plan_crop(it.width, it.height, bucket, flip=f) for it, f in zip(items, flips, strict=True)]
        keys = [self.key(it, plan) for it, plan in zip(items, plans, strict=True)]
        found = [self.get(k) for k in keys]
        missing = [i for i, latent in enumerate(found) if latent is None]
        self.hits += len(items) - len(missing)
        self.misses += len(missing)
        if missing:
            pixels = torch.stack([load_pixels(items[i].path, plans[i]) for i in missing])
            with torch.no_grad():
                encoded = encode_fn(pixels)
            if encoded.shape[0] != len(missing):
                raise ValueError(f"encode_fn returned {encoded.shape[0]} latents for {len(missing)} images")
            for row, i in enumerate(missing):
                self.put(keys[i], encoded[row], source=items[i].path)
                found[i] = self._memory[keys[i]] if self.in_memory else encoded[row].detach().to("cpu")
        return [latent for latent in found if latent is not None]
