"""The scanned dataset as plain, immutable records.

A `Dataset` is what the scanner produces and what everything downstream (buckets, batching,
metadata) consumes. It holds no open files and no tensors, so it is cheap to build, to pickle
into a UI worker and to compare in tests. Image sizes are stored *after* EXIF orientation,
because that is the shape the model will see: bucketing a phone photo by its raw sensor size
would put a portrait image into a landscape bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Image suffixes accepted in a concept folder (compared lower-case), as in kohya's
#: `IMAGE_EXTENSIONS` minus formats Pillow cannot decode without plugins.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


@dataclass(frozen=True)
class ImageItem:
    """One training image.

    `caption` is the first line of the caption file, or the folder's fallback caption
    (`"<token> <class>"`) when there is no caption file: kohya's `caption_by_folder`.
    `width`/`height` are measured after `ImageOps.exif_transpose`.
    """

    path: Path
    caption: str
    subset_index: int
    width: int
    height: int


@dataclass(frozen=True)
class Subset:
    """One `<repeats>_<token>[ <class>]` folder (kohya "subset").

    An ImageFolder dataset is one subset: the folder itself, `repeats` from the config and
    `token` = instance_prompt (its fallback caption). A flat class-image folder likewise has
    `token` = class_prompt.
    """

    path: Path
    repeats: int
    token: str
    class_token: str | None
    items: tuple[ImageItem, ...]

    @property
    def name(self) -> str:
        """The folder name, the key kohya uses in `ss_tag_frequency` / `ss_dataset_dirs`."""
        return self.path.name

    @property
    def fallback_caption(self) -> str:
        """Caption for an image without a caption file: `"token class"` or just `"token"`."""
        return f"{self.token} {self.class_token}" if self.class_token else self.token


@dataclass(frozen=True)
class Dataset:
    """All subsets of one training folder, in sorted (deterministic) order.

    `caption_extension` is the caption-file suffix (".txt"), or for an ImageFolder the
    metadata file it was read from ("metadata.jsonl"; "" when every image uses instance_prompt).
    """

    root: Path
    subsets: tuple[Subset, ...]
    caption_extension: str
    num_missing_captions: int
    #: (code, message) of the soft issues the scan found, logged once and kept for `dataset check`.
    scan_warnings: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    #: Images held out of training for the validation loss (`data/holdout.py`); not in `subsets`.
    held_out: tuple[ImageItem, ...] = field(default=(), compare=False)

    @property
    def items(self) -> list[ImageItem]:
        """Every image once, subset by subset; `TrainData` indexes into this list."""
        return [item for subset in self.subsets for item in subset.items]

    @property
    def num_images(self) -> int:
        """Distinct images. (kohya's `ss_num_train_images` is `num_repeated_images`.)"""
        return sum(len(s.items) for s in self.subsets)

    @property
    def num_repeated_images(self) -> int:
        """Images × repeats: the number of samples in one epoch (kohya `num_train_images`)."""
        return sum(len(s.items) * s.repeats for s in self.subsets)

    def repeats_of(self, item: ImageItem) -> int:
        """How many times `item` is seen per epoch."""
        return self.subsets[item.subset_index].repeats

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """`{subset folder name: {tag: count}}` for the `ss_tag_frequency` metadata key.

        kohya (`train_util.BaseDataset.set_tag_frequency`) splits each caption on ",",
        strips every tag, skips empty ones and counts per image, *not* per repeat.
        Fallback captions count too, as kohya stores them as the image's caption.
        """
        result: dict[str, dict[str, int]] = {}
        for subset in self.subsets:
            counts = result.setdefault(subset.name, {})
            for item in subset.items:
                for tag in item.caption.split(","):
                    tag = tag.strip()
                    if tag:
                        counts[tag] = counts.get(tag, 0) + 1
        return result

    def dataset_dirs_info(self) -> dict[str, dict[str, int]]:
        """`{folder name: {"n_repeats": n, "img_count": m}}` for `ss_dataset_dirs` (kohya)."""
        return {s.name: {"n_repeats": s.repeats, "img_count": len(s.items)} for s in self.subsets}
