"""Epochs → batches → tensors, deterministic from (seed, epoch, step) alone.

kohya semantics: every image appears `repeats` times per epoch; each batch is drawn from one
bucket (tensors must stack); order is shuffled within buckets, then the batches are shuffled.

Nothing here keeps hidden random state. The batch order of an epoch depends only on
(seed, epoch), and caption/flip/crop randomness of a batch only on (seed, epoch, step), so a
run resumed at step N sees exactly the batches and captions it would have seen.

Prior preservation (`class_data=`) is a component, not a subclass: `epoch_batches` and the step
arithmetic stay about instance samples only, and `load_batch` appends as many class samples
(chosen by `prior.ClassSampler`) after them, cropped into the instance batch's bucket.

torch is imported where tensors are made (`load_batch`), not at the top: the step arithmetic
(`num_batches_per_epoch`, `steps_breakdown`) is what `train --dry-run`, `dataset check` and the UI
print, and they must not pay seconds of torch import for it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.data.buckets import Bucket, BucketManager, bucket_histogram, bucket_info_metadata
from lorakiln.data.captions import process_caption
from lorakiln.data.dataset import Dataset, ImageItem
from lorakiln.data.images import CropPlan, load_pixels, plan_crop
from lorakiln.data.prior import ClassSampler
from lorakiln.data.seeding import derive_seed
from lorakiln.data.steps import BucketSteps, StepsBreakdown, SubsetSteps
from lorakiln.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lorakiln.data.latent_cache import EncodeFn, LatentCache

#: A sample reference inside an epoch: (index into `TrainData.items`, repeat number).
SampleRef = tuple[int, int]


@dataclass(frozen=True)
class CaptionOptions:
    """Caption processing (names as in the config schema and kohya)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    #: Drop *all* captions in epochs N, 2N, ... (1-based, as kohya counts epochs); 0 = never.
    caption_dropout_every_n_epochs: int = 0


@dataclass(frozen=True)
class AugmentOptions:
    """Pixel augmentations; both make the encoded latent vary, which limits caching."""

    flip_aug: bool = False
    random_crop: bool = False


@dataclass
class Batch:
    """One training batch; all samples share `bucket` (w, h).

    `latents` is set when a cache or `encode_fn` was given, `pixels` ([-1, 1], [B,3,H,W])
    otherwise or when encoding on the fly. Sizes are (h, w) and crops (top, left), the order
    SDXL's `add_time_ids` expects: original_size + crop_top_left + target_size.

    With prior preservation the last `num_prior` rows are class samples (as many as instance
    rows, diffusers' `torch.cat([instance, class])` order); every list and tensor follows that
    row order, so `loss[~is_prior].mean() + prior_loss_weight * loss[is_prior].mean()`.
    """

    bucket: Bucket
    paths: list[Path]
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crop_top_lefts: list[tuple[int, int]]
    target_sizes: list[tuple[int, int]]
    flipped: list[bool]
    pixels: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    num_prior: int = 0
    #: (first row, rows in all) of this batch inside the step's global batch when the step is
    #: split across processes (training/distributed.py); None for a single process.
    global_rows: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_instance(self) -> int:
        """Rows `[0, num_instance)` are instance samples."""
        return len(self.paths) - self.num_prior

    @property
    def is_prior(self) -> torch.Tensor:
        """CPU BoolTensor [B]: True for class (prior-preservation) rows."""
        import torch

        return torch.arange(len(self.paths)) >= self.num_instance


class TrainData:
    """A `Dataset` plus bucketing, caption and augmentation options, batch size and seed.

    `class_data` (class images, see `class_images.scan_class_images`) turns on prior
    preservation: each loaded batch then also carries one class sample per instance sample.
    """

    def __init__(self, dataset: Dataset, *, buckets: BucketManager | None = None, batch_size: int = 1,
                 seed: int = 42, captions: CaptionOptions | None = None,
                 augment: AugmentOptions | None = None, class_data: Dataset | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"train_batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.buckets = buckets or BucketManager()
        self.batch_size = batch_size
        self.seed = seed
        self.captions = captions or CaptionOptions()
        self.augment = augment or AugmentOptions()
        self.items: list[ImageItem] = dataset.items
        self.item_buckets: list[Bucket] = [self.buckets.assign_bucket(it.width, it.height) for it in self.items]
        self._by_bucket: dict[Bucket, list[int]] = defaultdict(list)
        for index, bucket in enumerate(self.item_buckets):
            self._by_bucket[bucket].append(index)
        self.prior: ClassSampler | None = ClassSampler(class_data, seed) if class_data is not None else None
        self._offsets: tuple[int, dict[SampleRef, int]] | None = None

    # -- epoch structure -------------------------------------------------------------------

    def _bucket_samples(self, bucket: Bucket) -> int:
        return sum(self.dataset.repeats_of(self.items[i]) for i in self._by_bucket[bucket])

    @property
    def num_batches_per_epoch(self) -> int:
        return sum(_ceil_div(self._bucket_samples(b), self.batch_size) for b in self._by_bucket)

    def epoch_batches(self, epoch: int) -> list[list[SampleRef]]:
        """All batches of `epoch` (0-based), as lists of (item index, repeat number)."""
        rng = random.Random(derive_seed(self.seed, "order", epoch))
        batches: list[list[SampleRef]] = []
        for bucket in sorted(self._by_bucket):
            refs = [(i, r) for i in self._by_bucket[bucket]
                    for r in range(self.dataset.repeats_of(self.items[i]))]
            rng.shuffle(refs)
            batches += [refs[j:j + self.batch_size] for j in range(0, len(refs), self.batch_size)]
        rng.shuffle(batches)
        return batches

    @property
    def samples_per_epoch(self) -> int:
        """Instance samples per epoch (images × repeats)."""
        return sum(self._bucket_samples(b) for b in self._by_bucket)

    def _batch_offset(self, epoch: int, batch_refs: list[SampleRef]) -> int:
        """Sample position of `batch_refs` within `epoch_batches(epoch)` (memoized per epoch): a
        whole batch, or one process's contiguous slice of one (training/distributed.py)."""
        if self._offsets is None or self._offsets[0] != epoch:
            table: dict[SampleRef, int] = {}
            position = 0
            for refs in self.epoch_batches(epoch):
                for ref in refs:
                    table[ref] = position
                    position += 1
            self._offsets = (epoch, table)
        offset = self._offsets[1].get(batch_refs[0])
        if offset is None:
            raise ValueError(f"with prior preservation a batch must be (a slice of) one of epoch_batches({epoch})")
        return offset

    def _class_items(self, batch_refs: list[SampleRef], epoch: int) -> list[ImageItem]:
        if self.prior is None:
            return []
        position = epoch * self.samples_per_epoch + self._batch_offset(epoch, batch_refs)
        return self.prior.take(position, len(batch_refs))

    # -- loading -----------------------------------------------------------------------------

    def _captions(self, items: list[ImageItem], epoch: int, step: int) -> list[str]:
        opts = self.captions
        rng = random.Random(derive_seed(self.seed, "caption", epoch, step))
        every = opts.caption_dropout_every_n_epochs
        drop_all = every > 0 and (epoch + 1) % every == 0
        return [process_caption(it.caption, shuffle=opts.shuffle_caption, keep_tokens=opts.keep_tokens,
                                caption_dropout_rate=opts.caption_dropout_rate,
                                caption_tag_dropout_rate=opts.caption_tag_dropout_rate,
                                drop_all=drop_all, rng=rng) for it in items]

    def _plans(self, items: list[ImageItem], bucket: Bucket, epoch: int, step: int) -> list[CropPlan]:
        rng = random.Random(derive_seed(self.seed, "augment", epoch, step))
        plans = []
        for it in items:
            flip = self.augment.flip_aug and rng.random() < 0.5  # kohya: flip with p = 0.5
            plans.append(plan_crop(it.width, it.height, bucket, random_crop=self.augment.random_crop,
                                   flip=flip, rng=rng))
        return plans

    def load_batch(self, batch_refs: list[SampleRef], *, epoch: int, step: int,
                   encode_fn: EncodeFn | None = None, cache: LatentCache | None = None) -> Batch:
        """Materialize one batch from `epoch_batches(epoch)[step]`.

        With `cache`, latents come from it (encoding misses with `encode_fn`); with only
        `encode_fn`, pixels are encoded on the fly; with neither, pixels are returned.
        Class samples (prior preservation) are resized to cover the instance bucket and
        centre-cropped (random crop / flip as configured), since a batch must share one size;
        their captions are used verbatim — no shuffling or dropout, as diffusers' class_prompt.
        """
        import torch

        instance = [self.items[i] for i, _ in batch_refs]
        bucket_set = {self.item_buckets[i] for i, _ in batch_refs}
        if len(bucket_set) != 1:
            raise ValueError(f"a batch must come from one bucket, got {sorted(bucket_set)}")
        bucket = bucket_set.pop()
        prior = self._class_items(batch_refs, epoch)
        items = instance + prior
        plans = self._plans(items, bucket, epoch, step)  # instance plans drawn first: unchanged by prior
        batch = Batch(bucket=bucket, paths=[it.path for it in items],
                      captions=self._captions(instance, epoch, step) + [it.caption for it in prior],
                      original_sizes=[(it.height, it.width) for it in items],
                      crop_top_lefts=[p.conditioning_crop_top_left for p in plans],
                      target_sizes=[p.target_size for p in plans], flipped=[p.flip for p in plans],
                      num_prior=len(prior))
        if cache is not None:
            self._check_cacheable()
            batch.latents = torch.stack(cache.get_or_encode_many(
                items, bucket, encode_fn or _not_cached, flips=batch.flipped))
            return batch
        batch.pixels = torch.stack([load_pixels(it.path, p) for it, p in zip(items, plans, strict=True)])
        if encode_fn is not None:
            with torch.no_grad():
                batch.latents = encode_fn(batch.pixels)
        return batch

    # -- caching -------------------------------------------------------------------------------

    def _check_cacheable(self) -> None:
        if self.augment.random_crop:
            raise ConfigError("cache_latents cannot be combined with random_crop: a random crop is a new "
                              "latent every step; set random_crop = false or cache_latents = false")

    def cache_all(self, encode_fn: EncodeFn, cache: LatentCache, *, progress: bool = True,
                  encode_batch_size: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None,
                  share: tuple[int, int] = (0, 1)) -> int:
        """Encode every (image, bucket[, flip]) once; return how many were newly encoded.

        Repeats are not re-encoded (same key). With `flip_aug` both orientations are cached,
        as kohya does, so flips stay free during training. With prior preservation every class
        image is also encoded once per instance bucket (it is cropped to whichever bucket
        it is paired with).

        `on_progress(done, total)` is called with ``(0, total)`` first and after every encoded
        chunk, so a watcher that is not the console (the web UI, through the trainer's events)
        can show how far caching is; it is called often, so it should be cheap or throttle itself.

        `share = (index, count)` encodes only every count-th chunk from `index` on: one of `count`
        processes caching one dataset together, each its share (the trainer then gathers them,
        training/distributed.py); progress then counts this share.
        """
        from tqdm.auto import tqdm

        self._check_cacheable()
        chunk = max(1, encode_batch_size or self.batch_size)
        variants = [False, True] if self.augment.flip_aug else [False]
        before = cache.misses
        class_items = self.prior.items if self.prior is not None else []
        chunks = []
        for bucket in sorted(self._by_bucket):
            bucket_items = [self.items[i] for i in self._by_bucket[bucket]] + class_items
            chunks += [(bucket, flip, bucket_items[j:j + chunk])
                       for flip in variants for j in range(0, len(bucket_items), chunk)]
        index, count = share
        mine = chunks[index::count]
        total = sum(len(items) for _, _, items in mine)
        done = 0
        if on_progress is not None:
            on_progress(done, total)
        with tqdm(total=total, desc="caching latents", unit="img", disable=not progress) as bar:
            for bucket, flip, items in mine:
                cache.get_or_encode_many(items, bucket, encode_fn, flips=[flip] * len(items))
                bar.update(len(items))
                done += len(items)
                if on_progress is not None:
                    on_progress(done, total)
        return cache.misses - before

    # -- reporting -------------------------------------------------------------------------

    def bucket_histogram(self, *, repeated: bool = True) -> dict[Bucket, int]:
        """Samples per bucket (with repeats by default, as kohya's `ss_bucket_info` counts)."""
        return bucket_histogram(b for i, b in enumerate(self.item_buckets)
                                for _ in range(self.dataset.repeats_of(self.items[i]) if repeated else 1))

    def bucket_info(self) -> dict:
        """The `ss_bucket_info` metadata value, including kohya's `mean_img_ar_error`."""
        errors = [abs(b[0] / b[1] - it.width / it.height) for it, b in zip(self.items, self.item_buckets,
                                                                             strict=True)]
        mean = sum(errors) / len(errors) if errors else 0.0
        return bucket_info_metadata(self.bucket_histogram(), mean)

    def steps_breakdown(self) -> StepsBreakdown:
        """Images, repeats per folder and per-bucket batches, for the pre-training summary."""
        subsets = tuple(SubsetSteps(s.name, len(s.items), s.repeats) for s in self.dataset.subsets)
        buckets = tuple(BucketSteps(b, n, _ceil_div(n, self.batch_size))
                        for b, n in ((b, self._bucket_samples(b)) for b in sorted(self._by_bucket)))
        return StepsBreakdown(subsets=subsets, buckets=buckets, batch_size=self.batch_size,
                              num_class_images=self.num_class_images)

    @property
    def num_class_images(self) -> int:
        """Distinct class images in use (0 without prior preservation; kohya `ss_num_reg_images`)."""
        return len(self.prior.items) if self.prior is not None else 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _not_cached(pixels: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("latent not in the cache and no encode_fn given; call TrainData.cache_all first")


__all__ = ["AugmentOptions", "Batch", "CaptionOptions", "SampleRef", "TrainData", "derive_seed"]
