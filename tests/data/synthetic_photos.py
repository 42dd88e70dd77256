"""Generated test images for the sharpness and image-finding tests (numpy + Pillow, no downloads).

`natural` stands in for a photo: overlapping shapes at every orientation, a 1/f ("pink") texture
as natural images have, drawn at twice the size and downscaled (antialiased edges) plus a little
sensor noise. `flat_graphic` is the opposite case the blur measure must not flag: large uniform
areas with crisp edges. `motion_blur` is a box blur along one axis, what a camera moving during
the exposure does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def natural(size: int = 256, seed: int = 0) -> Image.Image:
    """A photo-like RGB image (see the module docstring)."""
    rng = np.random.default_rng(seed)
    big = size * 2
    img = Image.new("RGB", (big, big), tuple(int(v) for v in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, big, 2))
        r = int(rng.integers(big // 20, big // 5))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=colour)
        elif kind == 1:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            draw.polygon([(float(x + r * np.cos(a)), float(y + r * np.sin(a))) for a in angles], fill=colour)
        else:
            a = rng.uniform(0, np.pi)
            dx, dy = float(r * np.cos(a)), float(r * np.sin(a))
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=int(rng.integers(2, 8)))
    pixels = np.asarray(img, dtype=np.float64)
    freq = np.fft.fftfreq(big)
    amplitude = 1 / np.maximum(np.hypot(*np.meshgrid(freq, freq)), 1 / big)
    texture = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(big, big))) * amplitude))
    pixels += (texture / texture.std() * 12)[..., None]
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    noisy = np.asarray(small, dtype=np.float64) + rng.normal(0, 2, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def flat_graphic(size: int = 256, *, antialiased: bool = False) -> Image.Image:
    """A logo-like graphic: a rectangle, a disc and a triangle on a plain background."""
    s = size * 4 if antialiased else size
    img = Image.new("RGB", (s, s), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    draw.rectangle([s // 10, s // 10, s // 2, s // 3], fill=(20, 60, 160))
    draw.ellipse([s // 2, s // 2, s * 9 // 10, s * 9 // 10], fill=(230, 120, 0))
    draw.polygon([(s // 10, s * 9 // 10), (s // 3, s // 2), (s // 2, s * 9 // 10)], fill=(30, 140, 60))
    return img.resize((size, size), Image.Resampling.LANCZOS) if antialiased else img


def motion_blur(img: Image.Image, length: int = 15, *, vertical: bool = False) -> Image.Image:
    """Average of `length` copies shifted 0…length-1 px along one axis (edges extended)."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    axis = 0 if vertical else 1
    pad = [(0, 0)] * 3
    pad[axis] = (length // 2, length - 1 - length // 2)
    padded = np.pad(pixels, pad, mode="edge")
    n = pixels.shape[axis]
    total = sum(np.take(padded, range(k, k + n), axis=axis) for k in range(length))
    return Image.fromarray(np.clip(np.rint(total / length), 0, 255).astype(np.uint8))
