"""Latent cache: keyed by image content, VAE fingerprint and geometry; atomic disk entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakiln.data.dataset import ImageItem
from lorakiln.data.latent_cache import LatentCache, file_sha256, vae_fingerprint


class CountingEncoder:
    """Fake VAE encode: 8× average pool + a 4th channel; counts images encoded."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.ndim == 4 and pixels.shape[1] == 3
        self.calls += 1
        self.images += pixels.shape[0]
        pooled = F.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def _item(path: Path, size: tuple[int, int] = (64, 48)) -> ImageItem:
    return ImageItem(path=path, caption="x", subset_index=0, width=size[0], height=size[1])


BUCKET = (64, 64)


def test_same_key_hits(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png", noise_seed=0))
    cache, enc = LatentCache("vae-a"), CountingEncoder()
    first = cache.get_or_encode(item, BUCKET, enc)
    second = cache.get_or_encode(item, BUCKET, enc)
    assert first.shape == (4, 8, 8)
    assert torch.equal(first, second)
    assert enc.images == 1 and (cache.hits, cache.misses) == (1, 1)


def test_flip_and_bucket_are_part_of_the_key(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png", noise_seed=0))
    cache, enc = LatentCache("vae-a"), CountingEncoder()
    plain = cache.get_or_encode(item, BUCKET, enc)
    flipped = cache.get_or_encode(item, BUCKET, enc, flip=True)
    cache.get_or_encode(item, (128, 64), enc)
    assert enc.images == 3
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-6)


def test_edited_image_misses(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "a.png", noise_seed=0)
    cache, enc = LatentCache("vae-a"), CountingEncoder()
    before = cache.get_or_encode(_item(path), BUCKET, enc)
    stat = path.stat()
    make_image(path, noise_seed=1)  # same path, new pixels
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems
    after = cache.get_or_encode(_item(path), BUCKET, enc)
    assert enc.images == 2
    assert not torch.equal(before, after)


def test_other_vae_fingerprint_misses(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png", noise_seed=0))
    enc = CountingEncoder()
    LatentCache("vae-a", tmp_path / "cache").get_or_encode(item, BUCKET, enc)
    LatentCache("vae-b", tmp_path / "cache").get_or_encode(item, BUCKET, enc)
    assert enc.images == 2


def test_disk_cache_survives_new_cache_object(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png", noise_seed=0))
    enc = CountingEncoder()
    first = LatentCache("vae-a", tmp_path / "cache").get_or_encode(item, BUCKET, enc)
    fresh = LatentCache("vae-a", tmp_path / "cache", in_memory=False)
    second = fresh.get_or_encode(item, BUCKET, enc)
    assert enc.images == 1 and fresh.hits == 1
    assert torch.equal(first, second)
    files = list((tmp_path / "cache").rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".safetensors"]  # no temp files left


def test_corrupt_disk_entry_is_re_encoded(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png", noise_seed=0))
    enc = CountingEncoder()
    LatentCache("vae-a", tmp_path / "cache").get_or_encode(item, BUCKET, enc)
    entry = next((tmp_path / "cache").rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:20])
    latent = LatentCache("vae-a", tmp_path / "cache").get_or_encode(item, BUCKET, enc)
    assert enc.images == 2 and latent.shape == (4, 8, 8)


def test_batch_misses_encode_in_one_call(tmp_path: Path, make_image) -> None:
    items = [_item(make_image(tmp_path / f"{i}.png", noise_seed=i)) for i in range(3)]
    cache, enc = LatentCache("vae-a"), CountingEncoder()
    cache.get_or_encode(items[1], BUCKET, enc)
    latents = cache.get_or_encode_many(items, BUCKET, enc)
    assert len(latents) == 3 and enc.calls == 2 and enc.images == 3


def test_encode_fn_wrong_batch_size(tmp_path: Path, make_image) -> None:
    item = _item(make_image(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="encode_fn returned"):
        LatentCache("vae-a").get_or_encode(item, BUCKET, lambda px: torch.zeros(2, 4, 8, 8))


def test_file_sha256_memoized_and_content_based(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    first = file_sha256(path)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"abd")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 5))
    assert file_sha256(path) != first


class TinyVae(nn.Module):
    def __init__(self, channels: int = 4, scaling: float = 0.18215) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.config = {"latent_channels": channels, "scaling_factor": scaling, "_name_or_path": "/a"}


def test_vae_fingerprint() -> None:
    torch.manual_seed(0)
    vae = TinyVae()
    fp = vae_fingerprint(vae)
    assert fp.startswith("vae-") and fp == vae_fingerprint(vae)
    vae.config["_name_or_path"] = "/elsewhere"
    assert vae_fingerprint(vae) == fp  # same weights from another folder still hit
    with torch.no_grad():
        vae.conv.weight[0, 0, 0, 0] += 0.5  # the first element is always sampled
    assert vae_fingerprint(vae) != fp
    torch.manual_seed(0)
    other = TinyVae(scaling=0.13025)
    assert vae_fingerprint(other) != fp
    torch.manual_seed(0)
    assert vae_fingerprint(TinyVae().half()) != fp  # same weights, other precision
