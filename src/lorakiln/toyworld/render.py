"""Render toy-world scenes to small anti-aliased RGB images, and degrade them.

Shapes are drawn `supersample` times larger with Pillow's polygon / ellipse rasteriser and
reduced with a BOX filter, so each output pixel is the exact area-weighted mix of shape and
background colour. That is what a diffusion model learns to reproduce (soft, linear edges),
and it is what lets the detector estimate sub-pixel coverage from colour alone.

`degrade` simulates what a small generator gets wrong — soft edges, a colour cast, pixel
noise, compression — so the detectors can be checked on images that are not clean renders.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lorakiln.toyworld.world import BACKGROUNDS, COLOURS, Scene

Point = tuple[float, float]

#: Inner / outer radius of the star's 10-gon. A true pentagram (0.38) has arms too thin to
#: survive a 1-px blur at 22 px; 0.45 keeps them while staying clearly star-like.
STAR_INNER = 0.45
#: Hole / outer radius of the ring: the hole stays ≥ 11 px wide at the smallest size.
RING_INNER = 0.5
#: Half-width of a cross arm relative to the arm length (the cross is a plus sign).
CROSS_HALF_WIDTH = 0.3


def _regular(n: int, radius: float = 1.0, phase: float = 90.0) -> list[Point]:
    return [(radius * math.cos(math.radians(phase + 360 * k / n)), radius * math.sin(math.radians(phase + 360 * k / n)))
            for k in range(n)]


def _star() -> list[Point]:
    outer, inner = _regular(5), _regular(5, STAR_INNER, 90 + 36)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _cross() -> list[Point]:
    w, s = CROSS_HALF_WIDTH, 1 / math.hypot(1, CROSS_HALF_WIDTH)  # corners on the unit circle
    quarter = [(w, 1.0), (w, w), (1.0, w)]
    points: list[Point] = []
    for k in range(4):  # the quarter outline turned clockwise by 0/90/180/270°
        c, d = round(math.cos(k * math.pi / 2)), -round(math.sin(k * math.pi / 2))
        points += [((x * c - y * d) * s, (x * d + y * c) * s) for x, y in quarter]
    return points


def _heart(steps: int = 96) -> list[Point]:
    raw = [(16 * math.sin(t) ** 3, 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
           for t in (2 * math.pi * k / steps for k in range(steps))]
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    scale = max(math.hypot(x - mx, y - my) for x, y in raw)
    return [((x - mx) / scale, (y - my) / scale) for x, y in raw]


#: Outlines in unit coordinates (y up), circumscribed by the unit circle around the origin.
OUTLINES: dict[str, list[Point]] = {
    "square": _regular(4, phase=45),
    "triangle": _regular(3),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
}


def _to_canvas(points: list[Point], scene: Scene, canvas: int) -> list[Point]:
    """Unit outline → canvas pixels: scale, rotate counter-clockwise, move to the centre."""
    radius = scene.size / 2 * canvas
    cx, cy = scene.centre[0] * canvas, scene.centre[1] * canvas
    c, s = math.cos(math.radians(scene.rotation)), math.sin(math.radians(scene.rotation))
    return [(cx + radius * (x * c - y * s), cy - radius * (x * s + y * c)) for x, y in points]


def _disc(draw: ImageDraw.ImageDraw, scene: Scene, canvas: int, fraction: float,
          fill: tuple[int, int, int]) -> None:
    radius = scene.size / 2 * canvas * fraction
    cx, cy = scene.centre[0] * canvas, scene.centre[1] * canvas
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator, jitter: int) -> tuple[int, int, int]:
    if jitter <= 0:
        return rgb
    shifted = np.clip(np.asarray(rgb) + rng.integers(-jitter, jitter + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def render(scene: Scene, size: int = 64, supersample: int = 4, *, jitter: int = 0, noise: float = 0.0,
           seed: int = 0) -> Image.Image:
    """`scene` as a `size`×`size` RGB image.

    Optional augmentations (off by default, seeded so the same call gives the same bytes):
    `jitter` shifts the shape and background colours independently by up to ±jitter per
    channel; `noise` adds Gaussian pixel noise with that σ (0–255 scale).
    """
    if scene.shape not in OUTLINES and scene.shape not in ("circle", "ring"):
        raise ValueError(f"unknown shape {scene.shape!r}")
    rng = np.random.default_rng(seed)
    fg = _jittered(COLOURS[scene.colour], rng, jitter)
    bg = _jittered(BACKGROUNDS[scene.background], rng, jitter)
    canvas = size * supersample
    image = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(image)
    if scene.shape in ("circle", "ring"):
        _disc(draw, scene, canvas, 1.0, fg)
        if scene.shape == "ring":
            _disc(draw, scene, canvas, RING_INNER, bg)
    else:
        draw.polygon(_to_canvas(OUTLINES[scene.shape], scene, canvas), fill=fg)
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    if noise > 0:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, noise, size=(size, size, 3))
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image


def degrade(image: Image.Image, seed: int = 0, *, blur: float = 1.0, noise: float = 8.0, shift: int = 8,
            jpeg_quality: int = 75) -> Image.Image:
    """What an imperfect generator does to an image, in this order: Gaussian blur (radius in
    px), a global colour cast (uniform ±`shift` per channel), Gaussian noise (σ, 0–255 scale)
    and a JPEG re-encode (skipped when `jpeg_quality` is 0). Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    shift, jpeg_quality = int(shift), int(jpeg_quality)
    out = image.convert("RGB")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(out, dtype=np.float32)
    if shift > 0:
        pixels = pixels + rng.integers(-shift, shift + 1, size=3)
    if noise > 0:
        pixels = pixels + rng.normal(0.0, noise, size=pixels.shape)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    if jpeg_quality > 0:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=jpeg_quality)
        buffer.seek(0)
        out = Image.open(buffer).convert("RGB")
    return out
