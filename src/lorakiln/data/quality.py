"""Per-image measurements behind `lorakiln dataset check`: sharpness, perceptual hash, colour.

The image-selection advice of the kohya_ss + AUTOMATIC1111 LoRA walkthrough — "high resolution, high quality … if a photo is blurry or low
resolution, err on the side of not including it", variety, one subject — becomes numbers a
user can act on before training:

* **sharpness**: the width of the image's edges, direction by direction (`edge_widths`).
  Blur widens every edge it crosses: a Gaussian blur of σ px in all directions, a camera or
  subject moving during the exposure only along the motion. Measures that pool all directions
  — the variance of the Laplacian (Pech-Pacheco et al. 2000) or its edge-normalised form used
  here before — stay high on a motion-blurred photo, because the edges *parallel* to the motion
  are still crisp (a photo blurred by 40 px of camera shake scored 1.07, "sharp"). So the edges
  are sorted by gradient orientation into four bins (0°, 45°, 90°, 135°), and in each the
  width of an edge is measured along its gradient as in Marziliano et al. 2002 ("A no-reference
  perceptual blur metric"): the intensity range across the edge (±`WIDTH_WINDOW` px) divided
  by the steepest slope, at pixels where the slope peaks (non-maximum suppression). A step
  edge is 2 px wide by this measure, a ramp of L px is L px wide. The width of a direction is
  the 25th percentile over its edges — the *sharpest* quarter, so a photo with a sharp subject
  in front of a soft background is not called blurry — and the image is judged by its softest
  direction, the direction of motion blur (as in Yitzhaky & Kopeika 1997, who find the motion
  direction as the one where the image's derivatives are weakest). The reported score is
  2 / width: 1.0 for crisp edges, 0.5 for 4-px-wide ones. Directions with too few edges are
  not judged, so a flat graphic with only horizontal and vertical edges is judged by those.
  Measured at most 512 px on the long side (never upscaled, which would blur).
* **perceptual hash**: `imagehash.phash` (64-bit DCT hash); a small Hamming distance means the
  same photo re-encoded, resized or lightly edited — a near-duplicate that only adds weight to
  one pose.
* **grayscale / alpha / mode / frames**: a black-and-white photo teaches "monochrome" as part of
  the concept unless captioned; transparent pixels are composited on white by the loader
  (`images.py`), and 16-bit, float and CMYK files are converted to 8-bit RGB (`image_modes.py`),
  which the user should know about. The file's Pillow mode is kept so the report can say which
  conversion ran. An animated GIF/WebP/PNG trains on its first frame only, so its frame count
  is kept too.

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
from lorakiln.data.images import flatten_to_rgb, frame_count, open_oriented

#: Long side the sharpness measure works at (downscale only).
SHARPNESS_SIDE = 512
#: Width in px of a crisp step edge by the measure below (the score's unit: 2 / width).
CRISP_WIDTH = 2.0
#: Edges wider than this (px at the measuring size) in some direction make an image blurry.
#: Calibrated on the scikit-image sample images (docs/dataset-checks.md has the numbers): 20 sharp
#: photos and graphics measure 2.0–2.9 px; the same after 15 px of motion blur 4.2–13 px, after a
#: Gaussian blur of σ = 2 px 4.0–6.1 px; the camera-shaken `clock_motion.png` 9.1 px. A star field
#: and a text scan, whose edges are points or run along the blur, stay under it.
BLUR_WIDTH = 4.0
#: `ImageStats.sharpness` below this is reported as blurry: CRISP_WIDTH / BLUR_WIDTH.
BLUR_THRESHOLD = CRISP_WIDTH / BLUR_WIDTH
#: A direction at least this many times wider than the sharpest one is called motion blur.
MOTION_RATIO = 2.0
#: Edge pixels of a direction: slope above this share of that direction's strongest slope (so a
#: blurred direction is measured on its own, weaker, edges) and above a few grey levels (so
#: sensor noise on flat areas is not an edge).
EDGE_SHARE = 0.25
EDGE_FLOOR = 2.0
#: Half-width of the window (px) the intensity range across an edge is taken over.
WIDTH_WINDOW = 10
#: Percentile of edge widths that stands for a direction: the sharpest quarter of its edges.
WIDTH_PERCENTILE = 25
#: A direction is judged only when it holds this share of all edge pixels (and 8 at least).
MIN_DIRECTION_SHARE = 0.05
MIN_DIRECTION_EDGES = 8
#: The four orientation bins: (dy, dx) step along the gradient, and the direction it names.
DIRECTIONS: tuple[tuple[tuple[int, int], str], ...] = (
    ((0, 1), "horizontal"), ((1, 1), "diagonal \\"), ((1, 0), "vertical"), ((1, -1), "diagonal /"))
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
    sharpness: float = 0.0  # 2 / edge width of the softest direction: 1.0 crisp, 0 no edges
    edge_width: float = 0.0  # px, softest direction (0: no edges)
    motion_direction: str | None = None  # set when one direction is much softer than the others
    phash: int = 0
    sha256: str = ""
    grayscale: bool = False
    has_alpha: bool = False  # some pixel is (partly) transparent
    mode: str = ""  # Pillow mode of the file ("I;16", "CMYK", ...)
    frames: int = 1  # > 1: animated; only the first frame is trained
    error: str | None = None


@dataclass(frozen=True)
class Sharpness:
    """Edge width per judged direction (px), and what they say together."""

    widths: dict[str, float]

    @property
    def edge_width(self) -> float:
        """Width of the softest judged direction; 0 when the image has no edges at all."""
        return max(self.widths.values(), default=0.0)

    @property
    def score(self) -> float:
        """CRISP_WIDTH / edge_width, at most 1: 1.0 crisp, 0.5 edges 4 px wide, 0 no edges."""
        return min(1.0, CRISP_WIDTH / self.edge_width) if self.edge_width else 0.0

    @property
    def motion_direction(self) -> str | None:
        """The softest direction when it is `MOTION_RATIO` times wider than the sharpest."""
        if len(self.widths) < 2:
            return None
        soft = max(self.widths, key=self.widths.__getitem__)
        return soft if self.widths[soft] >= MOTION_RATIO * min(self.widths.values()) else None


def _window(gray: np.ndarray, dy: int, dx: int, k: int, margin: int) -> np.ndarray:
    """`gray` shifted by k steps of (dy, dx), cropped by `margin` on every side."""
    h, w = gray.shape
    return gray[margin + k * dy:h - margin + k * dy, margin + k * dx:w - margin + k * dx]


def edge_widths(gray: np.ndarray) -> Sharpness:
    """Edge width per gradient direction of a grayscale float image (see the module docstring)."""
    margin = min(WIDTH_WINDOW, (min(gray.shape) - 3) // 2)
    if margin < 2:
        return Sharpness({})
    gx = (_window(gray, 0, 1, 1, margin) - _window(gray, 0, -1, 1, margin)) / 2
    gy = (_window(gray, 1, 0, 1, margin) - _window(gray, -1, 0, 1, margin)) / 2
    angle = np.degrees(np.arctan2(gy, gx)) % 180
    widths: dict[str, float] = {}
    counts: dict[str, int] = {}
    for theta, ((dy, dx), name) in zip((0, 45, 90, 135), DIRECTIONS, strict=True):
        slope = np.abs(_window(gray, dy, dx, 1, margin) - _window(gray, -dy, -dx, 1, margin)) / 2
        padded = np.zeros_like(gray)
        padded[margin:gray.shape[0] - margin, margin:gray.shape[1] - margin] = slope
        peak = (slope >= _window(padded, dy, dx, 1, margin)) & (slope >= _window(padded, -dy, -dx, 1, margin))
        in_bin = np.abs((angle - theta + 90) % 180 - 90) <= 22.5
        if not in_bin.any():
            continue
        edges = in_bin & peak & (slope > max(EDGE_FLOOR, EDGE_SHARE * float(slope[in_bin].max())))
        counts[name] = int(edges.sum())
        if counts[name] < MIN_DIRECTION_EDGES:
            continue
        ys, xs = np.nonzero(edges)
        steps = np.arange(-margin, margin + 1)[:, None]
        across = gray[ys + margin + steps * dy, xs + margin + steps * dx]  # the profile across each edge
        spread = across.max(axis=0) - across.min(axis=0)
        widths[name] = float(np.percentile(spread / slope[edges], WIDTH_PERCENTILE))
    total = sum(counts.values())
    return Sharpness({n: w for n, w in widths.items() if counts[n] >= MIN_DIRECTION_SHARE * total})


def edge_sharpness(gray: np.ndarray) -> float:
    """`edge_widths(gray).score`: 1.0 for crisp edges in every direction, 0 with no edges."""
    return edge_widths(gray).score


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
        frames = frame_count(path)
        img = open_oriented(path)
        eight_bit = to_8bit(img)
        has_alpha = _alpha_used(eight_bit)
        rgb = flatten_to_rgb(eight_bit)
        grayscale = _is_grayscale(img, rgb)
        width, height = rgb.size
        small = rgb.copy()
        small.thumbnail((SHARPNESS_SIDE, SHARPNESS_SIDE), Image.Resampling.LANCZOS)  # never enlarges
        sharp = edge_widths(np.asarray(small.convert("L"), dtype=np.float64))
        phash = int(str(imagehash.phash(rgb)), 16)
    except Exception as exc:  # Pillow raises many types for broken files
        return ImageStats(path=path, error=f"{type(exc).__name__}: {exc}")
    return ImageStats(path=path, width=width, height=height, sharpness=sharp.score, edge_width=sharp.edge_width,
                      motion_direction=sharp.motion_direction, phash=phash,
                      sha256=hashlib.sha256(data).hexdigest(), grayscale=grayscale, has_alpha=has_alpha,
                      mode=img.mode, frames=frames)


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
