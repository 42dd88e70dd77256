"""What every captioner shares: finding images, writing captions, the summary (models: `model_source`).

The captioners (`blip`, `tagger`) only turn a batch of RGB images into text; everything that
touches the user's folder lives here so both follow the same rules:

* images are found by `data.files.list_images` (the trainer's `IMAGE_EXTENSIONS`), by default
  recursively, since users point the command at the training root that holds kohya `10_token` folders;
* an image is opened with `open_image_rgb` (EXIF orientation applied, alpha over white): the
  caption must describe the picture the trainer will see, not the raw sensor pixels;
* an existing caption is kept — the file is not even opened for writing — unless `overwrite`;
  the model is not loaded at all when every image already has one;
* writes are atomic (`lorakiln.atomic`) and UTF-8, and images are never written, moved or renamed:
  an image suffix as caption extension is refused, and every caption target is checked against
  the images by path and file identity (`data/caption_target.py`);
* an unreadable image is reported by path and skipped: one bad download must not cost the
  captions of the other 200 images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from lorakiln.atomic import write_text_atomic
from lorakiln.data.caption_target import ImageGuard, check_caption_extension
from lorakiln.data.files import list_images, read_caption
from lorakiln.data.imagefolder import DEFAULT_CAPTION_COLUMN, DEFAULT_IMAGE_COLUMN, check_folder
from lorakiln.data.metadata_file import read_metadata
from lorakiln.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from PIL import Image

#: kohya writes both BLIP captions (`make_captions.py`) and WD14 tags
#: (`tag_images_by_wd14_tagger.py`) as `<stem>.txt` unless told otherwise.
DEFAULT_CAPTION_EXTENSION = ".txt"
#: The ImageFolder metadata file written by `output="metadata"` (the diffusers BLIP notebook's).
METADATA_FILE = "metadata.jsonl"
#: At most this many failed images are listed by `CaptionSummary.format`; the rest are counted.
MAX_LISTED_FAILURES = 20

#: A batch of RGB images in, one caption per image out (prefix/postfix already applied).
CaptionBatch = Callable[[list["Image.Image"]], list[str]]


@dataclass(frozen=True)
class OutputOptions:
    """Where captions go and which images are captioned; shared by both methods.

    `output` is "files" (a same-stem caption file next to each image, kohya's layout) or
    "metadata" (one `metadata.jsonl` in the folder, rows `{"file_name": ..., caption_column: ...}`,
    the HF ImageFolder layout the diffusers SDXL notebook writes).
    """

    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    overwrite: bool = False
    output: str = "files"
    caption_column: str = DEFAULT_CAPTION_COLUMN
    recursive: bool = True
    progress: bool = True


@dataclass
class CaptionSummary:
    """What a run did: images captioned, images whose caption was kept, images that failed."""

    root: Path
    destination: str
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no image failed (the command's exit status)."""
        return not self.failed

    def format(self) -> str:
        """One line for the counts, then one indented line per failed image (at most 20)."""
        parts = [f"captioned {_count(len(self.written), 'image')} ({self.destination})"]
        if self.kept:
            parts.append(f"kept {_count(len(self.kept), 'existing caption')} (use --overwrite to replace)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        lines = [", ".join(parts)]
        for path, reason in self.failed[:MAX_LISTED_FAILURES]:
            lines.append(f"  {_relative(path, self.root)}: {reason}")
        if len(self.failed) > MAX_LISTED_FAILURES:
            lines.append(f"  … and {len(self.failed) - MAX_LISTED_FAILURES} more")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- finding images


def images_to_caption(root: str | os.PathLike[str], *, recursive: bool = True) -> tuple[Path, list[Path]]:
    """(resolved root, its images sorted by path); hidden files and folders are skipped.

    Hidden folders (`.ipynb_checkpoints`, `.cache`) hold copies and caches, not training
    images, and the trainer's scanners skip them too. An empty folder is an error here
    (not an empty summary): the user most likely pointed at the wrong folder.
    """
    folder = check_folder(root, "the folder to caption")
    images = list_images(folder, recursive=recursive)
    if not images:
        where = f"{folder} or its subfolders" if recursive else str(folder)
        raise DatasetError(f"no images found in {where}; put .jpg/.jpeg/.png/.webp/.bmp files there"
                           + ("" if recursive else " (or drop --no-recursive to look in subfolders)"))
    return folder, images


# --------------------------------------------------------------------------- caption text


def join_caption(prefix: str, text: str, postfix: str, separator: str = " ") -> str:
    """`prefix + text + postfix`, adding `separator` only where the user did not.

    kohya_ss's GUI glues prefix/postfix with a space (`common_gui.add_pre_postfix`), so its
    "photo of anantn, " prefix gives a double space; here a prefix that already ends in a space
    gets nothing, one ending in "," gets a space, any other gets `separator` (" " for BLIP
    sentences, ", " for tags) — `--prefix zwx` and `--prefix "zwx, "` both give "zwx, long hair".
    """
    caption = text.strip()
    if prefix and caption:
        glue = "" if prefix[-1].isspace() else " " if prefix[-1] in ",;" else separator
        caption = prefix + glue + caption
    elif prefix:
        caption = prefix
    if postfix and caption:
        glue = "" if postfix[0].isspace() or postfix[0] in ",;" else separator
        caption = caption + glue + postfix
    elif postfix:
        caption = postfix
    return " ".join(caption.split())  # one line: a newline would end kohya's caption early


# --------------------------------------------------------------------------- writing


class CaptionFiles:
    """Per-image caption files: `<stem><ext>` beside each image (kohya's layout)."""

    def __init__(self, extension: str, overwrite: bool) -> None:
        self.extension = check_caption_extension(extension)  # never an image suffix: see caption_target
        self.overwrite = overwrite

    def target(self, image: Path) -> Path:
        return image.with_suffix(self.extension)

    def describe(self) -> str:
        return f"{self.extension} files next to the images"

    def has_caption(self, image: Path) -> bool:
        """True for a caption file with any text; an empty file is no caption to keep."""
        if self.overwrite:
            return False
        caption = read_caption(image, self.extension)
        # unreadable (or not UTF-8) but present: leave it alone rather than clobber it
        return caption.error is not None or bool(caption.text and caption.text.strip())

    def write(self, image: Path, caption: str) -> None:
        write_text_atomic(self.target(image), caption + "\n")  # kohya ends the file with a newline

    def close(self) -> None:
        """Nothing is buffered: each caption file is written as soon as it is known."""


class MetadataFile:
    """One `metadata.jsonl` in the root, merged by `file_name` with what is already there.

    Rows for other files and the other columns of a captioned row are kept as they were; a
    row's caption is replaced only with `overwrite`. The file is written atomically in `close`
    — also after an error or Ctrl-C — so an interrupted run keeps what it finished.
    """

    def __init__(self, root: Path, column: str, overwrite: bool) -> None:
        column = column.strip()
        if not column or column == DEFAULT_IMAGE_COLUMN:
            raise ConfigError(f"caption column {column!r} cannot be used; use e.g. \"prompt\" or \"text\"")
        self.root, self.column, self.overwrite = root, column, overwrite
        self.path = root / METADATA_FILE
        if (root / "metadata.csv").is_file():
            raise DatasetError(f"{root / 'metadata.csv'} exists; lorakiln caption --metadata writes "
                               f"{METADATA_FILE} and a folder may hold only one of them. Move metadata.csv "
                               "away, or caption into per-image files (drop --metadata)")
        self.rows: list[dict[str, object]] = []
        self.index: dict[str, int] = {}
        if self.path.is_file():
            self._read()
        self.changed = False

    def _read(self) -> None:
        problems: list[str] = []
        table = read_metadata(self.path, problems)
        if problems:
            raise DatasetError(f"{self.path} cannot be merged: " + "; ".join(problems)
                               + ". Fix it (or move it away) and run again; it was not changed")
        for row in table.rows:
            self.rows.append(dict(row.values))
            name = row.values.get(DEFAULT_IMAGE_COLUMN)
            if isinstance(name, str):
                self.index.setdefault(_metadata_key(name), len(self.rows) - 1)

    def key(self, image: Path) -> str:
        return image.relative_to(self.root).as_posix()

    def describe(self) -> str:
        return f"column {self.column!r} of {self.path}"

    def has_caption(self, image: Path) -> bool:
        if self.overwrite:
            return False
        row = self.index.get(self.key(image))
        value = self.rows[row].get(self.column) if row is not None else None
        return isinstance(value, str) and bool(value.strip())

    def write(self, image: Path, caption: str) -> None:
        key = self.key(image)
        if key in self.index:
            self.rows[self.index[key]][self.column] = caption
        else:
            self.rows.append({DEFAULT_IMAGE_COLUMN: key, self.column: caption})
            self.index[key] = len(self.rows) - 1
        self.changed = True

    def close(self) -> None:
        if self.changed:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows)
            write_text_atomic(self.path, text)
            self.changed = False


def _metadata_key(name: str) -> str:
    """`file_name` as the ImageFolder loader resolves it: relative, `/`-separated."""
    return PurePosixPath(name.strip().replace("\\", "/")).as_posix()


CaptionSink = CaptionFiles | MetadataFile


def open_sink(root: Path, output: OutputOptions) -> CaptionSink:
    """The writer for `output.output` ("files" or "metadata")."""
    if output.output == "files":
        return CaptionFiles(output.caption_extension, output.overwrite)
    if output.output == "metadata":
        return MetadataFile(root, output.caption_column, output.overwrite)
    raise ConfigError(f"output {output.output!r} is not one of 'files', 'metadata'")


# --------------------------------------------------------------------------- the shared driver


def caption_folder(root: str | os.PathLike[str], output: OutputOptions, load: Callable[[], CaptionBatch], *,
                   batch_size: int = 1, log: Callable[[str], None] | None = None) -> CaptionSummary:
    """Caption every image under `root` that has no caption yet, `batch_size` at a time.

    `load` builds the captioner; it is called once, and only if some image needs a caption.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size (--batch-size) must be at least 1, got {batch_size}")
    folder, images = images_to_caption(root, recursive=output.recursive)
    sink = open_sink(folder, output)
    summary = CaptionSummary(root=folder, destination=sink.describe())
    pending = _pending(images, sink, summary)
    if log:
        log(f"{len(images)} images in {folder}: {len(pending)} to caption, {len(summary.kept)} already captioned")
    if not pending:
        return summary
    caption_batch = load()
    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(pending), unit="image", disable=not output.progress, desc="captioning") as bar:
            for start in range(0, len(pending), batch_size):
                chunk = pending[start:start + batch_size]
                paths, pictures = _open_all(chunk, summary)
                if pictures:
                    captions = caption_batch(pictures)
                    for path, caption in zip(paths, captions, strict=True):
                        sink.write(path, caption)
                        summary.written.append(path)
                bar.update(len(chunk))
    finally:
        sink.close()
    return summary


def _pending(images: Sequence[Path], sink: CaptionSink, summary: CaptionSummary) -> list[Path]:
    """Images to caption; kept ones and same-stem clashes (`a.png` + `a.jpg`) go to the summary."""
    pending: list[Path] = []
    claimed: dict[Path, Path] = {}
    guard = ImageGuard(images)
    for image in images:
        if isinstance(sink, CaptionFiles):
            target = sink.target(image)
            guard.refuse(target, verb="caption")
            if target in claimed:
                # kohya pairs a caption with an image by stem, so a.png and a.jpg would share a.txt
                summary.failed.append((image, f"shares the caption file {target.name} with "
                                              f"{claimed[target].name}; rename one of them"))
                continue
            claimed[target] = image
        if sink.has_caption(image):
            summary.kept.append(image)
        else:
            pending.append(image)
    return pending


def _open_all(paths: Sequence[Path], summary: CaptionSummary) -> tuple[list[Path], list[Image.Image]]:
    from lorakiln.data.images import open_image_rgb

    opened: list[Path] = []
    pictures: list[Image.Image] = []
    for path in paths:
        try:
            pictures.append(open_image_rgb(path))
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
            summary.failed.append((path, f"cannot be read ({type(exc).__name__}: {exc}); re-export it or remove it"))
            continue
        opened.append(path)
    return opened, pictures
