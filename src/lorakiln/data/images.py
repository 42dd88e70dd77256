"""Opening images and turning them into training tensors (Pillow + numpy only).

Every open goes through `open_image_rgb`, which applies the EXIF orientation first: phones
store portrait photos as landscape pixels plus an orientation tag, and training on the raw
pixels would teach the LoRA sideways faces. Every Pillow mode is first brought to 8 bits with
its real range (`image_modes.to_8bit`: a 16-bit PNG is scaled, not clipped to white).
Transparency is composited on white, `image_modes.BACKGROUND` (not dropped):
`Image.convert("RGB")` keeps whatever colour sits under transparent pixels — often black or
garbage — which the model would otherwise learn as a background.

Geometry (`plan_crop`) is separate from pixels (`load_pixels`) so the loader can compute SDXL's
size/crop conditioning for a cached latent without decoding the image again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from lorakiln.data.image_modes import BACKGROUND, to_8bit

if TYPE_CHECKING:
    import torch

#: EXIF tag 0x0112; values 5-8 mean the image is stored rotated by 90° (width/height swap).
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

#: Bumped whenever resizing/cropping or the pixel conversion changes, so stale cached latents are
#: never reused. "2": 16-bit, 32-bit, float and CMYK images are converted with their real range.
PREPROCESS_VERSION = "2"


def probe_image(path: Path) -> tuple[int, int]:
    """Fully decode `path` and return its (width, height) after EXIF orientation.

    Decoding everything (not just the header) is what catches truncated downloads before a
    model is loaded; Pillow refuses truncated files while `ImageFile.LOAD_TRUNCATED_IMAGES`
    stays False, which we never change. JPEGs are decoded at reduced DCT scale (`draft`) —
    still reading every byte of the stream — to keep scanning thousands of photos fast.
    The swap for orientations 5-8 is exactly what `ImageOps.exif_transpose` does to the size.
    """
    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        if im.format == "JPEG":
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        im.load()
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return width, height


def frame_count(path: Path) -> int:
    """Frames in `path`: more than 1 for an animated GIF, WebP or PNG (APNG).

    Every reader here (`open_oriented`, the loader, `dataset init`) decodes the first frame
    only, so an animation trains as one still; `dataset check` and `dataset init` say so
    rather than let it happen silently. Reads the headers, decodes no pixels.
    """
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


def open_image_rgb(path: Path) -> Image.Image:
    """Open `path`, apply EXIF orientation and return 8-bit RGB (real range, alpha over white)."""
    return flatten_to_rgb(open_oriented(path))


def open_oriented(path: Path) -> Image.Image:
    """Open and decode `path` with its EXIF orientation applied, in its own mode."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def flatten_to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode, transparency composited on white (see the module docstring).

    `Image.alpha_composite` blends straight (not premultiplied) alpha: out = a·pixel + (1 − a)·255.
    """
    img = to_8bit(img)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


@dataclass(frozen=True)
class CropPlan:
    """How one image becomes one bucket-sized sample.

    The image is resized to `resized_size` (w, h) — the smallest size covering the bucket
    at the original aspect ratio — then the bucket-sized window at `crop_top_left`
    (top, left; resized coordinates, *before* any flip) is cut out and optionally flipped.
    """

    bucket: tuple[int, int]
    resized_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    flip: bool = False

    @property
    def target_size(self) -> tuple[int, int]:
        """(h, w) of the training sample: SDXL's `target_size` conditioning."""
        return self.bucket[1], self.bucket[0]

    @property
    def conditioning_crop_top_left(self) -> tuple[int, int]:
        """(top, left) as seen in the output image, for SDXL's `crops_coords_top_left`.

        After a horizontal flip the kept window's left edge is measured from the other side,
        as kohya does for flipped latents.
        """
        top, left = self.crop_top_left
        if self.flip:
            left = self.resized_size[0] - left - self.bucket[0]
        return top, left


def plan_crop(width: int, height: int, bucket: tuple[int, int], *, random_crop: bool = False,
              flip: bool = False, rng: random.Random | None = None) -> CropPlan:
    """Plan resize + crop of a `width`×`height` image into `bucket` (w, h).

    Scale = max(bw/w, bh/h) so the image covers the bucket while keeping its aspect; rounding
    is kohya's `int(x + 0.5)`, clamped so rounding never leaves a side short of the bucket.
    The crop is centred, or uniform-random from `rng` when `random_crop` (kohya `random_crop`).
    """
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw = max(bw, int(width * scale + 0.5))
    rh = max(bh, int(height * scale + 0.5))
    if random_crop:
        if rng is None:
            raise ValueError("random_crop needs an rng so crops are reproducible")
        top, left = rng.randint(0, rh - bh), rng.randint(0, rw - bw)
    else:
        top, left = (rh - bh) // 2, (rw - bw) // 2
    return CropPlan(bucket=(bw, bh), resized_size=(rw, rh), crop_top_left=(top, left), flip=flip)


def load_pixels(path: Path, plan: CropPlan) -> torch.Tensor:
    """Apply `plan` to the image at `path`; return float32 CHW in [-1, 1] (the VAE's range).

    Lanczos is used both ways: Pillow's resize filters widen their support when
    downscaling, so it antialiases like an area filter (kohya uses cv2 INTER_AREA there).
    """
    import torch

    img = open_image_rgb(path)
    if img.size != plan.resized_size:
        img = img.resize(plan.resized_size, Image.Resampling.LANCZOS)
    top, left = plan.crop_top_left
    img = img.crop((left, top, left + plan.bucket[0], top + plan.bucket[1]))
    if plan.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
