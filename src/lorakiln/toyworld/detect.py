"""Read a toy-world image back: which shape, which colour, on which background.

These detectors are the ruler for the toy-world experiments (likeness, adaptability and drift
of a LoRA), so they must work on what a small generator produces — soft edges, a colour
cast, noise — and not only on clean renders. They are analytic, not learned, so they cannot
share a generator's blind spots, and each step is a measurement a reader can check:

1. **Background**: the median of the 2-px image border (a shape never covers most of it),
   named by the nearest background colour in CIELAB.
2. **Foreground**: pixels more than `FOREGROUND_DELTA_E` from the background in CIELAB; the
   largest connected component is the shape. Too small (< 1 % of the image) or too big
   (> 50 %, larger than any scene's shape) means no clear shape: "none".
3. **Colour**: the median of the component's interior (eroded by 1 px, away from blended
   edges), named by the nearest shape colour in CIELAB.
4. **Coverage**: every pixel is a linear mix of shape and background colour (that is what
   anti-aliasing and blur produce), so projecting it onto the background→shape colour line
   gives its sub-pixel coverage `alpha`. Shape features are computed from `alpha`, which
   makes them precise even for a 20-px shape.
5. **Shape**: rotation-invariant features of the coverage map —
   * `hole`: soft area of enclosed holes / filled area (ring ≈ 0.25, others 0);
   * `h1`…`h8`: the Fourier amplitudes of the radial profile r(θ) around the centroid,
     relative to the mean radius. r(θ) comes from the coverage in 64 angular sectors
     (sector area = r²·Δθ/2), so it is sub-pixel and independent of the rotation. A shape
     with k-fold symmetry has energy only at multiples of k: triangle h3, square and cross
     h4 (the cross ~3× more), star h5, the circle none; the heart, the only shape without
     rotational symmetry, has a strong h2.
   The decision rules in `classify_shape` use thresholds placed between the classes'
   ranges measured on clean and heavily blurred renders (see docs/toyworld.md).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from lorakiln.toyworld.render import degrade as degrade_image
from lorakiln.toyworld.render import render
from lorakiln.toyworld.world import BACKGROUNDS, COLOURS, SHAPES, sample_scenes

#: ΔE*76 from the background above which a pixel is (mostly) shape. The closest allowed
#: shape/background pair is ≈43 apart; noise of σ≈8 (0–255) rarely reaches 20.
FOREGROUND_DELTA_E = 20.0
#: The shape component must cover at least / at most this fraction of the image.
MIN_AREA, MAX_AREA = 0.01, 0.5
#: Angular sectors of the radial profile and sub-samples per pixel side used to fill them.
SECTORS, SUBSAMPLES = 64, 4

#: Thresholds of the shape rules, placed between the feature ranges measured on 1400 scenes,
#: clean and blurred (2 px, σ=12 noise, JPEG q50): hole: ring 0.11–0.26, others ≤ 0.01;
#: h2: heart 0.12–0.17, others ≤ 0.05; strongest of h3/h4/h5: other shapes ≥ 0.05 (except
#: a few of the smallest blurred stars) vs circle ≤ 0.04; h4: square 0.05–0.14, cross 0.17–0.40.
RING_HOLE = 0.05
HEART_H2 = 0.07
ROUND_MAX = 0.04
CROSS_H4 = 0.165

#: The degradation used for the "degraded" half of `accuracy_report` (`render.degrade` args).
DEFAULT_DEGRADE: dict[str, float] = {"blur": 1.0, "noise": 8.0, "shift": 8, "jpeg_quality": 75}

_XYZ = (np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
        / np.array([[0.95047], [1.0], [1.08883]])).T.astype(np.float32)
_SUB_OFFSETS = ((np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5).astype(np.float32)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values on a 0–255 scale; any leading shape, last axis = 3."""
    c = np.asarray(rgb, dtype=np.float32) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ _XYZ
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_LAB = srgb_to_lab(np.array([COLOURS[n] for n in _COLOUR_NAMES], dtype=np.float32))
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_LAB = srgb_to_lab(np.array([BACKGROUNDS[n] for n in _BACKGROUND_NAMES], dtype=np.float32))


@dataclass(frozen=True)
class Detection:
    """What `detect` read from an image.

    Names are "none" when there is no clear shape (the background is still named). The
    confidences are in [0, 1]: 0 = on a decision boundary, 1 = far from every boundary; the
    overall `confidence` is their minimum. `features` holds the raw measurements (`area` and
    `centre` as fractions of the image, `hole`, `h1`…`h8`, colour distances) for debugging.
    """

    shape: str
    colour: str
    background: str
    confidence: float
    shape_confidence: float = 0.0
    colour_confidence: float = 0.0
    background_confidence: float = 0.0
    foreground_rgb: tuple[float, float, float] | None = None
    background_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    features: dict[str, float] = field(default_factory=dict)

    def matches(self, shape: str | None = None, colour: str | None = None, background: str | None = None) -> bool:
        """True when every attribute given (not None) was detected, e.g. from `parse_caption`."""
        return all(want is None or got == want for want, got in
                   ((shape, self.shape), (colour, self.colour), (background, self.background)))


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """H×W×3 float32 on a 0–255 scale. Float arrays with max ≤ 1 are taken as 0–1."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an H×W×3 image array, got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.floating) and arr.size and arr.max() <= 1.0:
        arr *= 255
    return arr


def _nearest(lab: np.ndarray, table: np.ndarray, names: tuple[str, ...]) -> tuple[str, float, float]:
    """(name, ΔE to it, confidence = 1 − d1/d2) of the nearest entry of `table`."""
    d = np.linalg.norm(table - lab, axis=-1)
    order = np.argsort(d)
    d1, d2 = float(d[order[0]]), float(d[order[1]])
    return names[order[0]], d1, (1 - d1 / d2) if d2 > 0 else 0.0


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask if count else np.zeros_like(mask)
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def radial_harmonics(coverage: np.ndarray, orders: int = 8) -> np.ndarray:
    """|Fourier amplitude| of r(θ)/mean r for orders 1..`orders`, r from the sector areas.

    Each pixel's coverage is spread over SUBSAMPLES² points so sectors near the centroid
    still receive the right area; r = sqrt(2·area/Δθ) is exact for shapes that are
    star-shaped around their centroid, which all toy shapes are (a ring's hole is filled).
    """
    ys, xs = np.nonzero(coverage > 0.01)
    weights = coverage[ys, xs]
    total = weights.sum()
    cy, cx = (ys * weights).sum() / total, (xs * weights).sum() / total
    dx = xs[:, None, None] + _SUB_OFFSETS[None, :, None] - cx
    dy = ys[:, None, None] + _SUB_OFFSETS[None, None, :] - cy
    sector = (((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * SECTORS).astype(np.int64)) % SECTORS
    w = np.broadcast_to((weights / SUBSAMPLES**2)[:, None, None], sector.shape)
    area = np.bincount(sector.ravel(), weights=w.ravel(), minlength=SECTORS)
    radius = np.sqrt(2 * area / (2 * np.pi / SECTORS))
    spectrum = np.abs(np.fft.rfft(radius)) * 2 / SECTORS / max(radius.mean(), 1e-9)
    return spectrum[1:orders + 1]


def _margin(value: float, threshold: float) -> float:
    """Confidence of a threshold decision: 0 at the threshold, 1 at a factor 2 from it."""
    if value <= 0 or threshold <= 0:
        return 1.0
    return float(min(abs(np.log(value / threshold)) / np.log(2), 1.0))


def classify_shape(features: Mapping[str, float]) -> tuple[str, float]:
    """(shape, confidence) from `hole` and `h2`…`h5` (see the module docstring).

    Rules, in order: a hole → ring; a strong h2 (and not merely a triangle's side effect) →
    heart; otherwise the strongest of h3 / h4 / h5 names the symmetry — too weak → circle,
    h3 → triangle, h5 → star, h4 → cross when strong, else square.
    """
    hole, h = features["hole"], {k: features[f"h{k}"] for k in (2, 3, 4, 5)}
    if hole >= RING_HOLE:
        return "ring", _margin(hole, RING_HOLE)
    margins = [_margin(hole, RING_HOLE)]
    if h[2] >= HEART_H2 and h[2] >= 0.5 * h[3]:
        return "heart", min(margins + [_margin(h[2], HEART_H2), _margin(h[2], 0.5 * h[3])])
    margins.append(_margin(h[2], HEART_H2) if h[2] < HEART_H2 else _margin(h[2], 0.5 * h[3]))
    order = max((3, 4, 5), key=lambda k: h[k])
    strength = h[order]
    margins.append(_margin(strength, ROUND_MAX))
    if strength < ROUND_MAX:
        return "circle", min(margins)
    runner_up = max(h[k] for k in (3, 4, 5) if k != order)
    margins.append(_margin(strength, max(runner_up, 1e-9)))
    if order == 3:
        return "triangle", min(margins)
    if order == 5:
        return "star", min(margins)
    margins.append(_margin(h[4], CROSS_H4))
    return ("cross" if h[4] >= CROSS_H4 else "square"), min(margins)


def _none(background: str, confidence: float, bg: np.ndarray, features: dict[str, float]) -> Detection:
    return Detection("none", "none", background, 0.0, 0.0, 0.0, confidence,
                     None, (float(bg[0]), float(bg[1]), float(bg[2])), features)


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Detect the shape, its colour and the background of one toy-world image (any size)."""
    rgb = _as_rgb_array(image)
    height, width, _ = rgb.shape
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                             rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    bg_lab = srgb_to_lab(bg)
    background, bg_delta, bg_conf = _nearest(bg_lab, _BACKGROUND_LAB, _BACKGROUND_NAMES)
    features: dict[str, float] = {"background_delta_e": bg_delta}
    delta = np.linalg.norm(srgb_to_lab(rgb) - bg_lab, axis=-1)
    component = _largest(delta > FOREGROUND_DELTA_E)
    features["area"] = float(component.sum()) / (height * width)
    if not MIN_AREA <= features["area"] <= MAX_AREA:
        return _none(background, bg_conf, bg, features)

    core = ndimage.binary_erosion(component)
    core = core if core.sum() >= 4 else component
    purest = core & (delta >= np.median(delta[core]))  # blended edge pixels lie closer to the background
    fg = np.median(rgb[purest], axis=0)
    colour, colour_delta, colour_conf = _nearest(srgb_to_lab(fg), _COLOUR_LAB, _COLOUR_NAMES)
    features["colour_delta_e"] = colour_delta

    line = fg - bg
    alpha = np.clip(((rgb - bg) @ line) / max(float(line @ line), 1e-6), 0.0, 1.0)
    mask = _largest(alpha > 0.5)
    filled = ndimage.binary_fill_holes(mask)
    coverage = np.where(ndimage.binary_dilation(filled, iterations=2), alpha, 0.0)
    holes = filled & ~mask
    near_holes = ndimage.binary_dilation(holes) & filled
    features["hole"] = float((1 - coverage[near_holes]).sum()) / max(int(filled.sum()), 1)
    solid = np.where(holes, 1.0, coverage)
    for k, amplitude in enumerate(radial_harmonics(solid), start=1):
        features[f"h{k}"] = float(amplitude)
    ys, xs = np.nonzero(solid)
    w = solid[ys, xs]
    features["centre_x"] = float((xs * w).sum() / w.sum() + 0.5) / width
    features["centre_y"] = float((ys * w).sum() / w.sum() + 0.5) / height
    shape, shape_conf = classify_shape(features)
    return Detection(shape, colour, background, min(shape_conf, colour_conf, bg_conf), shape_conf, colour_conf,
                     bg_conf, (float(fg[0]), float(fg[1]), float(fg[2])), (float(bg[0]), float(bg[1]), float(bg[2])),
                     features)


def _score(truth: list[tuple[str, str, str]], found: list[Detection]) -> dict[str, Any]:
    """Accuracy per attribute, all three at once, per shape, and the shape confusions."""
    def acc(pairs: list[tuple[tuple[str, str, str], Detection]], attr: int | None) -> float:
        hits = [all(t[i] == d_attrs[i] for i in range(3)) if attr is None else t[attr] == d_attrs[attr]
                for t, d in pairs for d_attrs in [(d.shape, d.colour, d.background)]]
        return sum(hits) / len(hits) if hits else float("nan")

    pairs = list(zip(truth, found, strict=True))
    result: dict[str, Any] = {"shape": acc(pairs, 0), "colour": acc(pairs, 1), "background": acc(pairs, 2),
                              "all": acc(pairs, None), "per_shape": {}}
    for shape in SHAPES:
        mine = [p for p in pairs if p[0][0] == shape]
        result["per_shape"][shape] = {"n": len(mine), "shape": acc(mine, 0), "colour": acc(mine, 1),
                                      "background": acc(mine, 2)}
    wrong = Counter(f"{t[0]}->{d.shape}" for t, d in pairs if t[0] != d.shape)
    wrong.update(f"{t[1]}->{d.colour}" for t, d in pairs if t[1] != d.colour)
    wrong.update(f"bg {t[2]}->{d.background}" for t, d in pairs if t[2] != d.background)
    result["confusions"] = dict(wrong.most_common())
    return result


def accuracy_report(n: int = 600, seed: int = 0, degrade: Mapping[str, float] | None = None,
                    size: int = 64, verbose: bool = True) -> dict[str, Any]:
    """Detector accuracy on `n` rendered, freely rotated scenes of the whole world (all pairs), clean and
    degraded (`render.degrade` with `degrade`, default `DEFAULT_DEGRADE`; each image its own
    seed). Returns {"clean": …, "degraded": …, "ms_per_image": …}; prints a table if verbose.
    """
    scenes = sample_scenes(n, seed, "all", rotate=True)  # rotated: the harder case
    truth = [(s.shape, s.colour, s.background) for s in scenes]
    clean = [render(s, size) for s in scenes]
    settings = dict(DEFAULT_DEGRADE if degrade is None else degrade)
    degraded = [degrade_image(img, seed * 1_000_003 + i, **settings) for i, img in enumerate(clean)]  # type: ignore[arg-type]
    start = time.perf_counter()
    found_clean = [detect(img) for img in clean]
    elapsed = time.perf_counter() - start
    report = {"n": n, "seed": seed, "size": size, "degrade": settings, "clean": _score(truth, found_clean),
              "degraded": _score(truth, [detect(img) for img in degraded]),
              "ms_per_image": 1000 * elapsed / max(n, 1)}
    if verbose:
        print(format_report(report))
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A Markdown table of an `accuracy_report` result: per shape, clean | degraded."""
    lines = [f"{report['n']} scenes, seed {report['seed']}, {report['size']} px; degraded = {report['degrade']}; "
             f"{report['ms_per_image']:.2f} ms per detection", "",
             "| shape | n | shape clean | colour clean | bg clean | shape degr. | colour degr. | bg degr. |",
             "|---|---|---|---|---|---|---|---|"]
    clean, degraded = report["clean"], report["degraded"]
    for shape in SHAPES:
        c, d = clean["per_shape"][shape], degraded["per_shape"][shape]
        lines.append(f"| {shape} | {c['n']} | " + " | ".join(f"{100 * x[k]:.1f} %" for x in (c, d)
                                                              for k in ("shape", "colour", "background")) + " |")
    lines.append(f"| **all** | {report['n']} | " + " | ".join(f"{100 * x[k]:.1f} %" for x in (clean, degraded)
                                                            for k in ("shape", "colour", "background")) + " |")
    lines.append(f"\nall three right: clean {100 * clean['all']:.1f} %, degraded {100 * degraded['all']:.1f} %")
    for name, part in (("clean", clean), ("degraded", degraded)):
        if part["confusions"]:
            lines.append(f"{name} errors: " + ", ".join(f"{k} ×{v}" for k, v in part["confusions"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    accuracy_report()
