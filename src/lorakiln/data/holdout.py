"""Held-out images for the validation loss: a seeded fraction of the training set, or a folder.

SimpleTuner's eval loss needs images the model never trained on, else it measures memorisation
and only ever falls. A `validation_split` takes a fraction of the scanned images out of the
subsets before batching, so the step arithmetic, the buckets and the latent cache never see them;
the choice depends only on (`train.seed`, the file paths), so a resumed run and `--dry-run` hold
out the same images. A subset always keeps at least one image: an emptied kohya folder would
change the repeats and captions the user set up.

Torch-free, like the rest of the plan (training/plan.py): `--dry-run` prints the split.
"""

from __future__ import annotations

import random
from dataclasses import replace

from lorakiln.data.dataset import Dataset, ImageItem
from lorakiln.data.seeding import derive_seed


def held_out_count(num_images: int, fraction: float) -> int:
    """How many images `fraction` holds out: at least one when the fraction is set, never all."""
    if fraction <= 0 or num_images < 2:
        return 0
    return min(num_images - 1, max(1, round(fraction * num_images)))


def split_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """`dataset` without a seeded `fraction` of its images, which go to `held_out`."""
    items = dataset.items
    wanted = held_out_count(len(items), fraction)
    if not wanted:
        return dataset
    order = sorted(items, key=lambda it: str(it.path))  # scan order must not move the choice
    random.Random(derive_seed(seed, "validation-split")).shuffle(order)
    left = [len(s.items) for s in dataset.subsets]
    chosen: set[ImageItem] = set()
    for item in order:
        if len(chosen) == wanted:
            break
        if left[item.subset_index] > 1:
            left[item.subset_index] -= 1
            chosen.add(item)
    subsets = tuple(replace(s, items=tuple(it for it in s.items if it not in chosen)) for s in dataset.subsets)
    held = tuple(it for it in items if it in chosen)
    return replace(dataset, subsets=subsets, held_out=dataset.held_out + held)


def with_held_out(dataset: Dataset, fraction: float, seed: int, extra: Dataset | None = None) -> Dataset:
    """The training dataset with its held-out images attached: the seeded split first, then the
    images of a separate validation folder (`extra`, scanned like a training folder)."""
    dataset = split_validation(dataset, fraction, seed)
    if extra is not None:
        dataset = replace(dataset, held_out=dataset.held_out + tuple(extra.items))
    return dataset
