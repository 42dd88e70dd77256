"""Aspect-ratio buckets with kohya `BucketManager` semantics.

Why buckets: square-cropping a 2:3 portrait throws away a third of it (often the head or
feet) and teaches the model that subjects are cut off. Instead each image goes to the
bucket — a (w, h) pixel size — whose aspect ratio is closest to its own, and every batch is
drawn from a single bucket so tensors stack.

Bucket sides are multiples of `reso_steps` (64: the VAE's 8× times the U-Net's 8× down-
sampling) and their area never exceeds the training resolution's area, so memory per step
stays bounded whatever the shape.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

Bucket = tuple[int, int]  # (width, height) in pixels


def make_bucket_resolutions(resolution: Bucket, *, min_size: int = 256, max_size: int = 1024,
                            steps: int = 64) -> list[Bucket]:
    """All predefined buckets for `resolution`, sorted (kohya `make_bucket_resolutions`).

    The square bucket of side floor(sqrt(area)/steps)*steps, plus for every width from
    `min_size` to `max_size` in `steps` the tallest height (a multiple of `steps`, at most
    `max_size`) that keeps width*height <= area — and the transposed bucket.
    """
    max_area = resolution[0] * resolution[1]
    resos: set[Bucket] = set()
    side = int(math.sqrt(max_area) // steps) * steps
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // steps) * steps)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


@dataclass(frozen=True)
class BucketManager:
    """Assigns images to buckets; one instance per training run.

    `enable_bucket=False` puts every image into the single `resolution` bucket (resize to
    cover + centre crop, kohya's non-bucket mode). `no_upscale=True` gives each image its
    own bucket that never enlarges it (kohya `bucket_no_upscale`).
    """

    resolution: Bucket = (512, 512)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    reso_steps: int = 64
    no_upscale: bool = False

    def __post_init__(self) -> None:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(f"min_bucket_reso {self.min_bucket_reso} > max_bucket_reso {self.max_bucket_reso}")
        if self.reso_steps <= 0 or self.resolution[0] <= 0 or self.resolution[1] <= 0:
            raise ValueError("resolution and reso_steps must be positive")

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    @property
    def predefined(self) -> list[Bucket]:
        """The fixed bucket list (empty in no-upscale mode, where buckets are per image)."""
        if not self.enable_bucket:
            return [self.resolution]
        if self.no_upscale:
            return []
        return make_bucket_resolutions(self.resolution, min_size=self.min_bucket_reso,
                                       max_size=self.max_bucket_reso, steps=self.reso_steps)

    def assign_bucket(self, width: int, height: int) -> Bucket:
        """The (bw, bh) bucket for a `width`×`height` image (size after EXIF orientation)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width}x{height} is not positive")
        if not self.enable_bucket:
            return self.resolution
        if self.no_upscale:
            return self._no_upscale_bucket(width, height)
        return self._closest_bucket(width, height)

    def _closest_bucket(self, width: int, height: int) -> Bucket:
        # kohya `select_bucket`: an exact size match wins; otherwise the smallest absolute
        # aspect-ratio error, ties going to the first bucket in sorted order.
        buckets = self._buckets
        if (width, height) in buckets:
            return width, height
        aspect = width / height
        return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))

    @functools.cached_property
    def _buckets(self) -> list[Bucket]:
        return self.predefined

    def _no_upscale_bucket(self, width: int, height: int) -> Bucket:
        # kohya `bucket_no_upscale`: shrink to the max area (never enlarge), then round sides
        # *down* to steps so the image still covers its bucket. Deviation: the long side is
        # also capped at max_bucket_reso (kohya lets a 8:1 panorama grow a 2900 px bucket).
        scale = min(1.0, math.sqrt(self.max_area / (width * height)),
                    self.max_bucket_reso / max(width, height))
        w, h = width * scale, height * scale
        steps = self.reso_steps
        # A side shorter than one step is rounded up to one step (kohya would make a 0 px bucket).
        bw = max(steps, int(w + 1e-6) // steps * steps)
        bh = max(steps, int(h + 1e-6) // steps * steps)
        return bw, bh


def bucket_histogram(buckets: Iterable[Bucket]) -> dict[Bucket, int]:
    """Count how many samples fall into each bucket, sorted by bucket for stable printing."""
    return dict(sorted(Counter(buckets).items()))


def bucket_info_metadata(histogram: dict[Bucket, int], mean_ar_error: float | None = None) -> dict:
    """The `ss_bucket_info` metadata value: `{"buckets": {"0": {"resolution": [w, h], "count": n}}}`.

    kohya counts samples *with* repeats here, so pass a histogram over repeated samples.
    """
    info: dict = {"buckets": {str(i): {"resolution": [w, h], "count": n}
                              for i, ((w, h), n) in enumerate(sorted(histogram.items()))}}
    if mean_ar_error is not None:
        info["mean_img_ar_error"] = mean_ar_error
    return info


def format_histogram(histogram: dict[Bucket, int]) -> str:
    """One line per bucket, e.g. `  512x768: 12`, for the run log."""
    return "\n".join(f"  {w}x{h}: {n}" for (w, h), n in sorted(histogram.items()))
