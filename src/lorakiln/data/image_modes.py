"""Every Pillow image mode → 8-bit pixels with the range the file really holds.

`Image.convert("RGB")` is only right for 8-bit modes. For the others Pillow clips instead of
scaling: a 16-bit grayscale PNG opens as mode `I;16` (values 0–65535) and `convert("RGB")`
turns every value above 255 into 255, so a normal photo trains as a nearly white image. The
rules below are lorakiln's, one per mode family (mode names from Pillow's "Concepts → Modes"
documentation):

* `1`, `L`, `P`, `RGB`, `RGBA`, `LA`, `PA`, `La`, `RGBa`, `RGBX`, `YCbCr`, `HSV`: already 8-bit;
  Pillow's own conversion is exact (`1` → 0 or 255, palettes looked up, alpha kept).
* `I;16`, `I;16L`, `I;16B`, `I;16N` (16-bit unsigned): value ÷ 257, rounded, so 0 → 0 and
  65535 → 255 exactly (257 = 65535 / 255, the scale PNG's sample-depth rescaling uses).
* `I` (32-bit signed): if every value lies in 0–65535 it is treated as 16-bit (÷ 257; older
  Pillow opened 16-bit PNGs as `I`); otherwise the range is stretched, min → 0 and max → 255.
* `F` (32-bit float): values in 0–1 are × 255 (the usual float-image convention); else values in
  0–255 are used as they are; else values in 0–65535 are ÷ 257; else min–max stretched. NaN and
  ±inf become 0 first.
* `CMYK` (no colour profile is applied): R = (255 − C)(255 − K) / 255, likewise G from M and B
  from Y, rounded — the naive formula Pillow ≥ 10 uses, written out so the result does not
  depend on the Pillow version.

A flat image (min = max) outside those ranges becomes black. Transparency is kept here; the
loader composites it on `BACKGROUND` (`images.flatten_to_rgb`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: What transparent pixels are composited on before training: white.
BACKGROUND = (255, 255, 255)
BACKGROUND_NAME = "white (255, 255, 255)"

#: 16-bit unsigned modes (Pillow may open a big-endian TIFF as `I;16B`).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Modes Pillow converts to RGB(A) exactly; the value is the mode kept (with or without alpha).
_EIGHT_BIT = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA",
              "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "HSV": "RGB"}
#: Modes whose pixels are gray levels only.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | SIXTEEN_BIT_MODES

_DESCRIPTIONS = {
    "1": "1-bit black and white (1): converted to 8-bit RGB (0 or 255)",
    "I": "32-bit integer grayscale (I): converted to 8-bit RGB (÷ 257 if all values fit 0–65535, else "
         "min–max stretched)",
    "F": "32-bit float grayscale (F): converted to 8-bit RGB (0–1 × 255; else 0–255 as is; else 0–65535 "
         "÷ 257; else min–max stretched)",
    "CMYK": "CMYK: converted to RGB with the naive formula (no colour profile), colours may shift",
    "YCbCr": "YCbCr: converted to RGB",
}


def describe_mode(mode: str) -> str | None:
    """How a mode reaches 8-bit RGB, for `dataset check`; None for modes converted exactly and
    unremarkably (`RGB`, `RGBA`, `L`, `LA`, `P`: the grayscale and transparency notes cover them)."""
    if mode in SIXTEEN_BIT_MODES:
        return f"16-bit grayscale ({mode}): converted to 8-bit RGB (value ÷ 257)"
    return _DESCRIPTIONS.get(mode)


def _from_gray_array(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def high_bit_to_l(img: Image.Image) -> Image.Image:
    """An `I;16*`, `I` or `F` image as 8-bit `L` by the rules in the module docstring."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if img.mode in SIXTEEN_BIT_MODES:
        return _from_gray_array(values / 257.0)
    if img.mode == "F" and low >= 0.0 and high <= 1.0:
        return _from_gray_array(values * 255.0)
    if img.mode == "F" and low >= 0.0 and high <= 255.0:
        return _from_gray_array(values)
    if low >= 0.0 and high <= 65535.0:
        return _from_gray_array(values / 257.0)
    return _from_gray_array(_stretch(values))


def cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK → RGB: channel = (255 − ink)(255 − K) / 255, rounded (see the module docstring)."""
    cmyk = np.asarray(img, dtype=np.float64)
    white = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:4]) / 255.0
    return Image.fromarray(np.clip(np.rint(white), 0, 255).astype(np.uint8), mode="RGB")


def to_8bit(img: Image.Image) -> Image.Image:
    """`img` in an 8-bit mode (`L`, `LA`, `RGB` or `RGBA`) holding its real range; alpha kept.

    A `P`, `L` or `RGB` image with `info["transparency"]` (PNG's tRNS chunk, GIF's transparent
    index) becomes `RGBA`/`LA`: Pillow's documented way to turn that into an alpha channel. A
    mode Pillow cannot convert at all raises its `ValueError`.
    """
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return high_bit_to_l(img)
    if mode == "CMYK":
        return cmyk_to_rgb(img)
    if mode in ("P", "L", "RGB") and "transparency" in img.info:  # a PNG tRNS chunk: one colour is clear
        return img.convert("LA" if mode == "L" else "RGBA")
    if mode == "P":
        return img.convert("RGB")
    target = _EIGHT_BIT.get(mode, "RGB")
    return img if mode == target else img.convert(target)
