"""Prior-preservation batches: class rows after instance rows, one bucket, deterministic, cached."""

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
    scan_class_images,
    scan_kohya_dataset,
)
from lorakiln.data.prior import ClassSampler

SMALL = BucketManager((96, 96), min_bucket_reso=32, max_bucket_reso=192, reso_steps=32)
CLASS_PROMPT = "a photo of a toy"


def _encode(pixels: torch.Tensor) -> torch.Tensor:
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled[:, :1]], dim=1)


@pytest.fixture
def folders(tmp_path: Path, make_image) -> tuple[Path, Path]:
    """Instance: 3 landscape x 2 repeats + 2 portrait x 1. Class: 4 square images, one captioned."""
    train = tmp_path / "train"
    for i in range(3):
        make_image(train / "2_zwx toy" / f"l{i}.png", (120, 64), caption=f"zwx toy, tag{i}", noise_seed=i)
    for i in range(2):
        make_image(train / "1_zwx toy" / f"p{i}.png", (64, 120), caption=f"zwx toy, p{i}", noise_seed=10 + i)
    cls = tmp_path / "class"
    for i in range(4):
        make_image(cls / f"c{i}.png", (80, 80), noise_seed=20 + i)
    (cls / "c3.txt").write_text("a photo of a red toy", encoding="utf-8")
    return train, cls


def _data(folders: tuple[Path, Path], prior: bool = True, **kwargs) -> TrainData:
    kwargs.setdefault("buckets", SMALL)
    kwargs.setdefault("batch_size", 2)
    class_data = scan_class_images(folders[1], CLASS_PROMPT) if prior else None
    return TrainData(scan_kohya_dataset(folders[0]), class_data=class_data, **kwargs)


def test_each_batch_carries_as_many_class_rows_in_its_bucket(folders) -> None:
    data = _data(folders)
    class_paths = {it.path for it in data.prior.items}
    for step, refs in enumerate(data.epoch_batches(0)):
        batch = data.load_batch(refs, epoch=0, step=step)
        n = len(refs)
        assert len(batch) == 2 * n and batch.num_instance == n and batch.num_prior == n
        assert batch.is_prior.tolist() == [False] * n + [True] * n and batch.is_prior.dtype == torch.bool
        w, h = batch.bucket
        assert batch.pixels is not None and batch.pixels.shape == (2 * n, 3, h, w)  # class images cropped in
        assert batch.target_sizes == [(h, w)] * (2 * n)
        assert not set(batch.paths[:n]) & class_paths and set(batch.paths[n:]) <= class_paths
        for path, caption in zip(batch.paths[n:], batch.captions[n:], strict=True):
            assert caption == ("a photo of a red toy" if path.name == "c3.png" else CLASS_PROMPT)
        assert all(size == (80, 80) for size in batch.original_sizes[n:])


def test_steps_and_instance_rows_unchanged_by_prior(folders) -> None:
    opts = dict(captions=CaptionOptions(shuffle_caption=True, caption_dropout_rate=0.3),
                augment=AugmentOptions(flip_aug=True), seed=3)
    with_prior, plain = _data(folders, **opts), _data(folders, prior=False, **opts)
    assert with_prior.epoch_batches(1) == plain.epoch_batches(1)
    assert with_prior.num_batches_per_epoch == plain.num_batches_per_epoch == 3 + 1  # ceil(6/2) + ceil(2/2)
    steps = with_prior.steps_breakdown()
    assert steps.total_steps(5) == plain.steps_breakdown().total_steps(5) == 20
    assert steps.num_class_images == 4 and "step count is unchanged" in steps.format(5)
    assert "prior preservation" not in plain.steps_breakdown().format(5)
    refs = with_prior.epoch_batches(1)[2]
    a = with_prior.load_batch(refs, epoch=1, step=6)
    b = plain.load_batch(refs, epoch=1, step=6)
    n = len(refs)
    assert a.captions[:n] == b.captions and a.flipped[:n] == b.flipped and a.paths[:n] == b.paths
    assert torch.equal(a.pixels[:n], b.pixels)
    assert b.num_prior == 0 and not b.is_prior.any()


def test_class_choice_deterministic_and_resumable(folders) -> None:
    first = _data(folders, seed=7)
    batches = first.epoch_batches(2)
    expected = [first.load_batch(r, epoch=2, step=s).paths for s, r in enumerate(batches)]
    resumed = _data(folders, seed=7)  # a fresh process resuming at the last batch of epoch 2
    assert resumed.load_batch(batches[-1], epoch=2, step=len(batches) - 1).paths == expected[-1]
    assert [resumed.load_batch(r, epoch=2, step=s).paths for s, r in enumerate(batches)] == expected
    other_epoch = [first.load_batch(r, epoch=3, step=s).paths for s, r in enumerate(first.epoch_batches(3))]
    assert other_epoch != expected
    pair = next(r for r in batches if len(r) == 2)
    # one process's slice of a batch (training/distributed.py) gets the class image its sample gets
    # in the whole batch: the second instance row's partner is the last row of the whole batch
    whole = first.load_batch(pair, epoch=2, step=0).paths
    assert first.load_batch(pair[1:], epoch=2, step=0).paths == [whole[1], whole[3]]
    with pytest.raises(ValueError, match="epoch_batches"):  # not a sample of that epoch: no class position
        first.load_batch([(pair[0][0], 999)], epoch=2, step=0)  # a repeat the epoch does not have


def test_class_images_used_evenly_across_the_run(folders) -> None:
    data = _data(folders, batch_size=1)
    counts: Counter[str] = Counter()
    for epoch in range(3):  # 8 samples per epoch, 4 class images: each used twice per epoch
        for step, refs in enumerate(data.epoch_batches(epoch)):
            batch = data.load_batch(refs, epoch=epoch, step=step)
            counts.update(p.name for p in batch.paths[batch.num_instance:])
    assert counts == {f"c{i}.png": 6 for i in range(4)}


def test_class_repeats_from_reg_folders(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "3_dog" / "a.png")
    make_image(tmp_path / "1_dog" / "b.png")
    sampler = ClassSampler(scan_class_images(tmp_path), seed=0)
    names = Counter(it.path.name for it in sampler.take(0, 4 * 10))  # 10 rounds of 4 samples
    assert names == {"a.png": 30, "b.png": 10}
    assert sampler.take(5, 3) == ClassSampler(scan_class_images(tmp_path), seed=0).take(5, 3)


def test_cached_latents_cover_class_rows(folders, tmp_path: Path) -> None:
    data = _data(folders, augment=AugmentOptions(flip_aug=True))
    cache = LatentCache("vae-test", tmp_path / "latents")
    buckets = {data.item_buckets[i] for i in range(len(data.items))}
    expected = (len(data.items) + 4 * len(buckets)) * 2  # class images once per bucket, both flips
    assert data.cache_all(_encode, cache, progress=False) == expected
    assert data.cache_all(_encode, cache, progress=False) == 0
    misses = cache.misses
    for step, refs in enumerate(data.epoch_batches(0)):
        batch = data.load_batch(refs, epoch=0, step=step, cache=cache)  # no encode_fn: must all hit
        w, h = batch.bucket
        assert batch.latents is not None and batch.latents.shape == (2 * len(refs), 4, h // 8, w // 8)
        assert batch.pixels is None
    assert cache.misses == misses
    assert data.num_class_images == 4


def test_class_latent_matches_direct_encode(folders) -> None:
    data = _data(folders)
    refs = data.epoch_batches(0)[0]
    cached = data.load_batch(refs, epoch=0, step=0, cache=LatentCache("vae-test"), encode_fn=_encode)
    direct = data.load_batch(refs, epoch=0, step=0, encode_fn=_encode)
    assert torch.allclose(cached.latents, direct.latents, atol=1e-6)
