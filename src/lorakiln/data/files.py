"""The one place that lists a folder's images and reads an image's caption file.

Why one place: the trainer's scanners, the caption editor, the captioners and `dataset check`
must agree on which files are images and what a caption file says, or a folder that the
caption tools call finished trains differently. Callers differ only in the options below:

* `recursive` — the scanners read one folder at a time (kohya `10_token` subsets); the caption
  tools walk a whole training root.
* `skip_hidden` — the caption tools and `dataset check` skip hidden files and folders
  (`.ipynb_checkpoints`, macOS `._x.jpg`), which are never training images; the trainer's
  scanners list every image file so a stray one is reported rather than silently dropped.
* `follow_links` — the caption editor follows symlinked folders (each real folder once),
  as a linked-in subset trains too.

Images are recognised by `IMAGE_EXTENSIONS` (the formats the trainer reads), not by what
Pillow could open: a `.gif` is reported by the scanners, not trained. Only `prep init`, which
converts such files, passes wider `extensions`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from lorakiln.data.dataset import IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str], *, recursive: bool = True, skip_hidden: bool = True,
                follow_links: bool = False, extensions: Collection[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files in `folder` (and, if `recursive`, its subfolders), sorted by path.

    Without `recursive` a missing folder raises (`FileNotFoundError`, as `Path.iterdir`):
    the scanners check existence first and want a bug to be loud. A recursive walk of a
    missing folder finds nothing, which `dataset check` reports as "no images".
    """
    def wanted(name: str) -> bool:
        return Path(name).suffix.lower() in extensions and not (skip_hidden and name.startswith("."))

    root = Path(folder)
    if not recursive:
        return sorted(p for p in root.iterdir() if wanted(p.name) and p.is_file())
    found: list[Path] = []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        real = Path(dirpath).resolve()
        if real in visited:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not (skip_hidden and d.startswith("."))]
        found += [p for p in (Path(dirpath, name) for name in filenames if wanted(name))
                  if p.is_file()]
    return sorted(found)


@dataclass(frozen=True)
class CaptionFile:
    """One image and its caption file as read from disk.

    `text` is the whole decoded file (BOM removed), None when there is no file; `error` says
    why an existing file could not be read (not UTF-8, unreadable).
    """

    image: Path
    path: Path
    text: str | None
    error: str | None = None

    @property
    def lines(self) -> list[str]:
        """The non-blank lines, stripped (the trainer reads the first; the rest are ignored)."""
        return [] if self.text is None else [line.strip() for line in self.text.splitlines() if line.strip()]

    @property
    def caption(self) -> str | None:
        """The first non-blank line, stripped (what the trainer uses); None if missing or blank."""
        lines = self.lines
        return lines[0] if lines else None

    def with_caption(self, caption: str) -> str:
        """The whole file with its caption line replaced; every other line is kept as is."""
        if self.text is None:
            return caption + "\n"
        lines = self.text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip():
                lines[i] = caption + line[len(line.splitlines()[0]):]  # keep its line ending
                return "".join(lines)
        return caption + self.text  # blank file: the caption goes in front of its blank lines


def read_caption(image: Path, extension: str) -> CaptionFile:
    """Read `<image stem><extension>`; problems are recorded on the result, never raised.

    A UTF-8 BOM (Windows Notepad) is stripped by the `utf-8-sig` codec; a file that is not
    UTF-8 is an error naming the first bad byte, so the user can find and re-save it.
    """
    path = image.with_suffix(extension)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return CaptionFile(image=image, path=path, text=None)
    except OSError as exc:
        return CaptionFile(image=image, path=path, text=None,
                           error=f"caption {str(path)!r} cannot be read ({exc.strerror or exc})")
    try:
        return CaptionFile(image=image, path=path, text=raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return CaptionFile(image=image, path=path, text=None,
                           error=f"caption {str(path)!r} is not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                 f"position {exc.start}); re-save it as UTF-8")
