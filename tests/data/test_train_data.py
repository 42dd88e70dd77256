"""Batching: one bucket per batch, repeats honoured, determinism, captions, caching, steps."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lorakiln.data import (
    AugmentOptions,
    BucketManager,
    CaptionOptions,
    LatentCache,
    TrainData,
    scan_kohya_dataset,
)
from lorakiln.errors import ConfigError

#: Small buckets so tests run fast: 128x64 (landscape), 96x96, 64x128 (portrait), ...
SMALL = BucketManager((96, 96), min_bucket_reso=32, max_bucket_reso=192, reso_steps=32)


def _encode(pixels: torch.Tensor) -> torch.Tensor:
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled[:, :1]], dim=1)


@pytest.fixture
def mixed(tmp_path: Path, make_image) -> Path:
    """5 landscape images (3 repeats) and 3 portrait images (2 repeats)."""
    root = tmp_path / "train"
    for i in range(5):
        make_image(root / "3_zwx toy" / f"l{i}.png", (120, 64), caption=f"zwx toy, tag{i}, red, blue",
                   noise_seed=i)
    for i in range(3):
        make_image(root / "2_sks" / f"p{i}.png", (64, 120), caption=f"sks, tag{i}", noise_seed=10 + i)
    return root


def _data(root: Path, **kwargs) -> TrainData:
    kwargs.setdefault("buckets", SMALL)
    kwargs.setdefault("batch_size", 2)
    return TrainData(scan_kohya_dataset(root), **kwargs)


def test_batches_from_one_bucket_and_repeats_honoured(mixed: Path) -> None:
    data = _data(mixed)
    batches = data.epoch_batches(0)
    assert len(batches) == data.num_batches_per_epoch == 8 + 3  # ceil(15/2) + ceil(6/2)
    for batch in batches:
        assert len({data.item_buckets[i] for i, _ in batch}) == 1
        assert 1 <= len(batch) <= 2
    counts = Counter(i for batch in batches for i, _ in batch)
    for index, item in enumerate(data.items):
        assert counts[index] == data.dataset.repeats_of(item)
    refs = [ref for batch in batches for ref in batch]
    assert len(refs) == len(set(refs)) == 21


def test_epoch_order_deterministic_from_seed_and_epoch(mixed: Path) -> None:
    a, b = _data(mixed, seed=1), _data(mixed, seed=1)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != _data(mixed, seed=2).epoch_batches(0)


def test_load_batch_pixels_and_sdxl_sizes(mixed: Path) -> None:
    data = _data(mixed)
    refs = next(b for b in data.epoch_batches(0) if len(b) == 2)
    batch = data.load_batch(refs, epoch=0, step=0)
    w, h = batch.bucket
    assert batch.pixels is not None and batch.pixels.shape == (2, 3, h, w)
    assert batch.latents is None
    assert batch.target_sizes == [(h, w)] * 2
    item = data.items[refs[0][0]]
    assert batch.original_sizes[0] == (item.height, item.width)
    assert len(batch.captions) == len(batch.paths) == 2


def test_encode_fn_without_cache_gives_latents(mixed: Path) -> None:
    data = _data(mixed)
    refs = data.epoch_batches(0)[0]
    batch = data.load_batch(refs, epoch=0, step=0, encode_fn=_encode)
    assert batch.latents is not None and batch.latents.shape[1] == 4


def test_mixed_bucket_batch_rejected(mixed: Path) -> None:
    data = _data(mixed)
    assert set(data.item_buckets) == {(128, 64), (64, 128)}
    landscape, portrait = data.item_buckets.index((128, 64)), data.item_buckets.index((64, 128))
    with pytest.raises(ValueError, match="one bucket"):
        data.load_batch([(landscape, 0), (portrait, 0)], epoch=0, step=0)


def test_captions_depend_only_on_seed_epoch_step(mixed: Path) -> None:
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.2)
    data = _data(mixed, captions=opts, seed=5)
    refs = data.epoch_batches(2)[4]
    first = data.load_batch(refs, epoch=2, step=4).captions
    data.load_batch(data.epoch_batches(0)[0], epoch=0, step=0)  # unrelated work in between
    resumed = _data(mixed, captions=opts, seed=5).load_batch(refs, epoch=2, step=4).captions
    assert first == resumed
    many = {tuple(data.load_batch(refs, epoch=2, step=s).captions) for s in range(10)}
    assert len(many) > 1
    for caption in first:
        assert caption.split(", ")[0] in {"zwx toy", "sks"}


def test_caption_dropout_every_n_epochs(mixed: Path) -> None:
    data = _data(mixed, captions=CaptionOptions(caption_dropout_every_n_epochs=2))
    refs = data.epoch_batches(0)[0]
    assert all(data.load_batch(refs, epoch=0, step=0).captions)  # epoch 1 (1-based)
    assert data.load_batch(refs, epoch=1, step=0).captions == ["", ""][: len(refs)]  # epoch 2


def test_cache_all_then_load_from_cache(mixed: Path, tmp_path: Path) -> None:
    data = _data(mixed)
    cache = LatentCache("vae-test", tmp_path / "latents")
    assert data.cache_all(_encode, cache, progress=False) == 8
    assert data.cache_all(_encode, cache, progress=False) == 0  # everything already cached
    refs = data.epoch_batches(0)[0]
    batch = data.load_batch(refs, epoch=0, step=0, cache=cache)  # no encode_fn: must all hit
    w, h = batch.bucket
    assert batch.latents is not None and batch.latents.shape == (len(refs), 4, h // 8, w // 8)
    assert batch.pixels is None


def test_processes_cache_a_share_each_and_together_all(mixed: Path) -> None:
    """`share`: two processes encode disjoint halves; adopting each other's, both hold every latent."""
    data = _data(mixed)
    alone = LatentCache("vae-test")
    assert data.cache_all(_encode, alone, progress=False) == 8
    first, second = LatentCache("vae-test"), LatentCache("vae-test")
    done = [data.cache_all(_encode, first, progress=False, share=(0, 2)),
            data.cache_all(_encode, second, progress=False, share=(1, 2))]
    assert sum(done) == 8 and min(done) > 0
    assert not first.held().keys() & second.held().keys()
    first.adopt(second.held())
    assert first.held().keys() == alone.held().keys()


def test_flip_aug_caches_both_orientations(mixed: Path) -> None:
    data = _data(mixed, augment=AugmentOptions(flip_aug=True))
    cache = LatentCache("vae-test")
    assert data.cache_all(_encode, cache, progress=False) == 16
    for step, refs in enumerate(data.epoch_batches(0)):
        data.load_batch(refs, epoch=0, step=step, cache=cache)
    assert cache.misses == 16


def test_random_crop_forbids_cache(mixed: Path) -> None:
    data = _data(mixed, augment=AugmentOptions(random_crop=True))
    with pytest.raises(ConfigError, match="random_crop"):
        data.cache_all(_encode, LatentCache("vae-test"), progress=False)
    with pytest.raises(ConfigError, match="cache_latents"):
        data.load_batch(data.epoch_batches(0)[0], epoch=0, step=0, cache=LatentCache("vae-test"))
    batch = data.load_batch(data.epoch_batches(0)[0], epoch=0, step=0)  # uncached is fine
    assert batch.pixels is not None


def test_steps_breakdown_and_bucket_info(mixed: Path) -> None:
    data = _data(mixed)
    steps = data.steps_breakdown()
    assert steps.num_images == 8 and steps.samples_per_epoch == 21
    assert steps.batches_per_epoch == data.num_batches_per_epoch == 11
    assert steps.total_steps(10) == 110
    text = steps.format(10)
    assert "3_zwx toy: 5 images x 3 repeats = 15" in text and "= 110" in text and "105" in text
    info = data.bucket_info()
    assert sum(b["count"] for b in info["buckets"].values()) == 21
    assert "mean_img_ar_error" in info


def test_real_tiny_vae_end_to_end(mixed: Path) -> None:
    from diffusers import AutoencoderKL

    from lorakiln.data import vae_fingerprint
    from lorakiln.models.tiny import TINY_VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor

    data = _data(mixed)
    cache = LatentCache(vae_fingerprint(vae))
    data.cache_all(encode, cache, progress=False)
    batch = data.load_batch(data.epoch_batches(0)[0], epoch=0, step=0, cache=cache)
    assert batch.latents is not None and torch.isfinite(batch.latents).all()
