"""Per-image measurements behind `lorakiln dataset check`: sharpness, perceptual hash, colour.

The image-selection advice of the kohya_ss + AUTOMATIC1111 LoRA walkthrough — "high resolution, high quality … if a photo is blurry or low
resolution, err on the side of not including it", variety, one subject — becomes numbers a
user can act on before training:

* **sharpness**: how sharp the image's edges are, independent of their contrast: the RMS of
  the Laplacian over edge pixels divided by their mean gradient. For an edge blurred by a
  Gaussian of σ px the ratio falls roughly as 1/σ (a crisp edge ≈ 1.9, σ = 1 ≈ 0.75, σ = 2 ≈ 0.4).
  The plain variance of the Laplacian (Pech-Pacheco et al. 2000) also depends on contrast and
  on how much of the image is edge, so it calls flat graphics and low-contrast photos blurry;
  restricting it to edges and normalising removes both. Measured at most 512 px on the long
  side (never upscaled, which would blur).
* **perceptual hash**: `imagehash.phash` (64-bit DCT hash); a small Hamming distance means the
  same photo re-encoded, resized or lightly edited — a near-duplicate that only adds weight to
  one pose.
* **grayscale / alpha / mode**: a black-and-white photo teaches "monochrome" as part of the concept
  unless captioned; transparent pixels are composited on white by the loader (`images.py`), and
  16-bit, float and CMYK files are converted to 8-bit RGB (`image_modes.py`), which the user
  should know about. The file's Pillow mode is kept so the report can say which conversion ran.

Measurements run in a thread pool (Pillow and numpy release the GIL).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lorakiln.data.image_modes import GRAY_MODES, to_8bit
from lorakiln.data.images import flatten_to_rgb, open_oriented

#: Long side the sharpness measure works at (downscale only).
SHARPNESS_SIDE = 512
#: Below this edge sharpness an image is reported as blurry: about a Gaussian blur of σ ≈ 1.3 px
#: at the measuring size.
BLUR_THRESHOLD = 0.6
#: Edge pixels: gradient magnitude above this share of the image's strongest gradient (and
#: above a few grey levels, so sensor noise on flat areas is not an edge).
EDGE_SHARE = 0.25
EDGE_FLOOR = 4.0
#: Hamming distance (of 64 bits) at or below which two perceptual hashes are near-duplicates.
DUPLICATE_DISTANCE = 4
#: An RGB image whose channels never differ by more than this is treated as grayscale.
GRAY_TOLERANCE = 3


@dataclass(frozen=True)
class ImageStats:
    """Measurements of one image (after EXIF orientation), or `error` when it cannot be read."""

    path: Path
    width: int = 0
    height: int = 0
    sharpness: float = 0.0
    phash: int = 0
    sha256: str = ""
    grayscale: bool = False
    has_alpha: bool = False  # some pixel is (partly) transparent
    mode: str = ""  # Pillow mode of the file ("I;16", "CMYK", ...)
    error: str | None = None


def edge_sharpness(gray: np.ndarray) -> float:
    """RMS Laplacian over edge pixels ÷ their mean gradient (see the module docstring); 0 when
    the image has no edges at all."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    centre = gray[1:-1, 1:-1]
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * centre
    grad = np.hypot((gray[1:-1, 2:] - gray[1:-1, :-2]) / 2, (gray[2:, 1:-1] - gray[:-2, 1:-1]) / 2)
    edges = grad > max(EDGE_FLOOR, EDGE_SHARE * float(grad.max()))
    if not edges.any():
        return 0.0
    return float(np.sqrt(np.mean(lap[edges] ** 2)) / np.mean(grad[edges]))


def _alpha_used(eight_bit: Image.Image) -> bool:
    """`eight_bit` is `to_8bit`'s result: alpha, if any, is a real "A" channel by now."""
    if eight_bit.mode not in ("RGBA", "LA"):
        return False
    return int(np.asarray(eight_bit.getchannel("A")).min()) < 255


def _is_grayscale(img: Image.Image, rgb: Image.Image) -> bool:
    if img.mode in GRAY_MODES:
        return True
    pixels = np.asarray(rgb, dtype=np.int16)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return int(spread.max()) <= GRAY_TOLERANCE


def measure_image(path: Path) -> ImageStats:
    """All measurements of one image; a read failure becomes `error` (never raises)."""
    import imagehash

    try:
        data = path.read_bytes()
        img = open_oriented(path)
        eight_bit = to_8bit(img)
        has_alpha = _alpha_used(eight_bit)
        rgb = flatten_to_rgb(eight_bit)
        grayscale = _is_grayscale(img, rgb)
        width, height = rgb.size
        small = rgb.copy()
        small.thumbnail((SHARPNESS_SIDE, SHARPNESS_SIDE), Image.Resampling.LANCZOS)  # never enlarges
        gray = np.asarray(small.convert("L"), dtype=np.float64)
        phash = int(str(imagehash.phash(rgb)), 16)
    except Exception as exc:  # Pillow raises many types for broken files
        return ImageStats(path=path, error=f"{type(exc).__name__}: {exc}")
    return ImageStats(path=path, width=width, height=height, sharpness=edge_sharpness(gray), phash=phash,
                      sha256=hashlib.sha256(data).hexdigest(), grayscale=grayscale, has_alpha=has_alpha,
                      mode=img.mode)


def measure_images(paths: Sequence[Path], max_workers: int | None = None) -> list[ImageStats]:
    """`measure_image` for every path, in order, in a thread pool."""
    workers = max_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(measure_image, paths))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def duplicate_groups(stats: Sequence[ImageStats], max_distance: int = DUPLICATE_DISTANCE) -> list[list[Path]]:
    """Groups (size ≥ 2) of identical or near-identical images, by perceptual hash.

    Single-linkage over pairs within `max_distance`; a dataset of a few hundred images makes the
    O(n²) comparison of 64-bit integers instant.
    """
    good = [s for s in stats if s.error is None]
    parent = list(range(len(good)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(good):
        for j in range(i + 1, len(good)):
            b = good[j]
            if a.sha256 == b.sha256 or hamming(a.phash, b.phash) <= max_distance:
                parent[root(j)] = root(i)
    groups: dict[int, list[Path]] = {}
    for i, s in enumerate(good):
        groups.setdefault(root(i), []).append(s.path)
    return [g for g in groups.values() if len(g) > 1]
