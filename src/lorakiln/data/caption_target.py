"""Caption writers never replace an image: the rule `dataset edit`, `lorakiln caption` and
`dataset sheet` share.

A caption file is `<image stem><caption_extension>` next to the image (kohya's layout), so the
extension alone decides what gets written. `--caption-extension .png` would turn `a.jpg`'s
caption into `a.png`, replacing the photo beside it; `.gif` or `.tif` would replace files the
trainer does not read but the user still owns. Refused: the trainer's image suffixes, the image
formats it skips, and every suffix Pillow registers a reader or writer for
(`Image.registered_extensions()`, Pillow's list of file formats).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lorakiln.data.dataset import IMAGE_EXTENSIONS
from lorakiln.data.scan_common import IGNORED_IMAGE_EXTENSIONS, normalize_caption_extension
from lorakiln.errors import ConfigError
from lorakiln.io_guard import OverwriteInputError, resolved


def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes that name images (trainer, skipped formats, Pillow's registry)."""
    from PIL import Image

    return frozenset(IMAGE_EXTENSIONS | IGNORED_IMAGE_EXTENSIONS | set(Image.registered_extensions()))


def check_caption_extension(caption_extension: str) -> str:
    """The normalized extension (".txt"); a `ConfigError` for one that could name an image, a
    folder or nothing."""
    ext = normalize_caption_extension(caption_extension)
    if ext == "." or any(sep in ext for sep in ("/", "\\")) or ext.lower() in image_suffixes():
        raise ConfigError(f"caption extension {caption_extension!r} cannot be used: it names an image format (or "
                          "nothing), and writing captions with it would overwrite the images. Use a text suffix "
                          "such as .txt or .caption")
    return ext


class ImageGuard:
    """The images of one run, by resolved path and by file identity (device, inode), so each
    caption target is checked in O(1): the last line of defence behind `check_caption_extension`
    (a hard link or a symlink named like a caption is caught too)."""

    def __init__(self, images: Iterable[Path]) -> None:
        self.paths: set[Path] = set()
        self.ids: set[tuple[int, int]] = set()
        for image in images:
            self.paths.add(resolved(image))
            try:
                st = os.stat(image)
            except OSError:
                continue
            self.ids.add((st.st_dev, st.st_ino))

    def refuse(self, target: Path, *, verb: str) -> None:
        """`OverwriteInputError` when writing `target` would replace one of the images."""
        hit = resolved(target) in self.paths
        if not hit:
            try:
                st = os.stat(target)
                hit = (st.st_dev, st.st_ino) in self.ids
            except OSError:
                hit = False
        if hit:
            raise OverwriteInputError(f"{verb}: {target} is one of the input images (same path or same file); "
                                      "lorakiln never writes over its inputs — choose another output, or for "
                                      "captions check caption_extension and the file names")
