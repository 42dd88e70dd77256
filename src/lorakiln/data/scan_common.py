"""Checks shared by every folder scanner (kohya folders, ImageFolder, class images).

Each scanner collects problems into one `ScanReport` and raises a single `DatasetError`
at the end, so a user fixes everything in one go instead of one crash per restart. Soft
issues are counted and logged once per kind (never once per image). Keeping the image and
caption checks here means a kohya folder, a `metadata.jsonl` folder and a class-image folder
reject the same broken file with the same words.
"""

from __future__ import annotations

import difflib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.data.dataset import ImageItem, Subset
from lorakiln.data.files import list_images, read_caption
from lorakiln.data.images import probe_image
from lorakiln.errors import DatasetError

logger = logging.getLogger(__name__)

#: Caption extensions used by common tools; a file with one of these that is *not* the
#: configured extension is almost always a misconfiguration (kohya_ss defaults to ".caption"
#: in some versions and ".txt" in others).
KNOWN_CAPTION_EXTENSIONS: tuple[str, ...] = (".txt", ".caption", ".tags", ".cap")
#: Image formats people drop in that we do not train on; reported so they are not silently lost.
IGNORED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl"})
#: At most this many problems are listed in one error; the rest are counted.
MAX_LISTED_PROBLEMS = 25


@dataclass
class ScanReport:
    """Problems (errors) and counted soft issues collected during one scan.

    `fallback` says in the missing-caption warning what such images train with instead
    (the folder caption for kohya, `instance_prompt` / `class_prompt` elsewhere).
    """

    fallback: str = "their folder's caption `<token> <class>`"
    folder_problems: list[str] = field(default_factory=list)  # listed first: fix structure first
    problems: list[str] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    empty_captions: list[Path] = field(default_factory=list)
    multiline: list[Path] = field(default_factory=list)
    other_ext: list[Path] = field(default_factory=list)
    full_name_captions: list[Path] = field(default_factory=list)
    ignored_images: list[Path] = field(default_factory=list)
    unlisted_images: list[Path] = field(default_factory=list)
    empty_folders: list[Path] = field(default_factory=list)
    no_token_folders: list[Path] = field(default_factory=list)  # kohya `10_`: nothing after the `_`

    @property
    def num_missing_captions(self) -> int:
        return len(self.missing) + len(self.empty_captions)


def normalize_caption_extension(ext: str) -> str:
    """Accept "txt" or ".txt" (kohya requires the dot; forgetting it is a classic mistake)."""
    ext = ext.strip()
    return ext if ext.startswith(".") else f".{ext}"


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The most similar choice (case-insensitive match first), for "did you mean" hints."""
    choices = list(choices)
    for choice in choices:
        if choice.lower() == name.lower():
            return choice
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return close[0] if close else None


def probe_or_message(path: Path) -> tuple[int, int] | str:
    """Size of the image, or the reason it cannot be decoded (any Pillow failure)."""
    try:
        return probe_image(path)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(exc).__name__}: {exc}"


def probe_images(paths: Sequence[Path], report: ScanReport,
                 pool: ThreadPoolExecutor) -> Iterator[tuple[Path, tuple[int, int] | None]]:
    """Decode every image (in `pool`; Pillow releases the GIL), yielding (path, size or None).

    Lazy on purpose: an unreadable image's problem is recorded when it is reached, so the
    error lists problems in file order, interleaved with the caller's caption problems.
    """
    for path, size in zip(paths, pool.map(probe_or_message, paths), strict=True):
        if isinstance(size, str):
            report.problems.append(f"image {str(path)!r} cannot be read ({size}); re-export it or remove it")
            yield path, None
        else:
            yield path, size


def trainer_caption(image: Path, ext: str, report: ScanReport) -> str | None:
    """First line of the caption file (kohya reads `lines[0].strip()`), or None if absent/empty.

    An empty file is treated like a missing one — a captioner that crashed mid-run should
    not silently train images with no trigger word. An unreadable file is a problem and
    trains with "" (the scan fails anyway).
    """
    file = read_caption(image, ext)
    if file.error:
        report.problems.append(file.error)
        return ""
    if file.text is None:
        report.missing.append(image)
        return None
    lines = file.lines
    if not lines:
        report.empty_captions.append(file.path)
        return None
    if len(lines) > 1:
        report.multiline.append(file.path)
    return lines[0]


def check_duplicate_stems(images: Iterable[Path], report: ScanReport) -> None:
    """`a.jpg` + `a.png` would share `a.txt`: ambiguous, so both are named in an error."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in images:
        by_stem[path.stem].append(path)
    for paths in by_stem.values():
        if len(paths) > 1:
            names = " and ".join(repr(p.name) for p in paths)
            report.problems.append(
                f"images {names} in {str(paths[0].parent)!r} share the name {paths[0].stem!r}, so they "
                "would share one caption file; rename or remove all but one")


def check_other_caption_files(files: list[Path], images: list[Path], ext: str, report: ScanReport) -> None:
    """Find captions the configured extension would miss (`.caption` vs `.txt`, `a.png.txt`)."""
    stems = {p.stem for p in images}
    names = {p.name for p in images}
    for path in files:
        suffix = path.suffix
        if suffix != ext and suffix.lower() not in KNOWN_CAPTION_EXTENSIONS:
            continue
        if path.stem in names:
            report.full_name_captions.append(path)
        elif suffix != ext and path.stem in stems:
            report.other_ext.append(path)


def scan_captioned_folder(folder: Path, *, index: int, repeats: int, token: str, class_token: str | None,
                          ext: str, report: ScanReport, pool: ThreadPoolExecutor,
                          no_caption_fix: str | None = None) -> Subset:
    """Images directly in `folder` with same-stem captions → one `Subset`.

    An image without a caption trains with the subset's `fallback_caption`, unless that is
    empty: then it is a problem, and `no_caption_fix` says how to fix it.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())  # every file: stray captions, GIFs
    images = list_images(folder, recursive=False, skip_hidden=False)
    report.ignored_images += [p for p in files if p.suffix.lower() in IGNORED_IMAGE_EXTENSIONS]
    check_duplicate_stems(images, report)
    check_other_caption_files(files, images, ext, report)
    subset = Subset(path=folder, repeats=repeats, token=token, class_token=class_token, items=())
    items: list[ImageItem] = []
    for path, size in probe_images(images, report, pool):
        if size is None:
            continue
        caption = trainer_caption(path, ext, report)
        if caption is None:
            caption = subset.fallback_caption
            if not caption:
                report.problems.append(f"image {str(path)!r} has no {ext} caption; {no_caption_fix}")
        items.append(ImageItem(path=path, caption=caption, subset_index=index, width=size[0], height=size[1]))
    return Subset(path=folder, repeats=repeats, token=token, class_token=class_token, items=tuple(items))


def raise_if_problems(root: Path, problems: list[str], what: str = "dataset") -> None:
    """One `DatasetError` listing up to `MAX_LISTED_PROBLEMS` problems (the rest counted)."""
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{what} {str(root)!r} has {len(problems)} problem(s); fix them all and run again:"]
    lines += [f"  - {p}" for p in listed]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more")
    raise DatasetError("\n".join(lines))


def warning_messages(report: ScanReport, ext: str) -> list[tuple[str, str]]:
    """(code, message) per kind of soft issue, with a count and one example path.

    The same words are logged by the trainer and listed by `lorakiln dataset check`.
    """
    out: list[tuple[str, str]] = []
    if report.empty_folders:
        out.append(("empty-folder", f"{len(report.empty_folders)} folder(s) have no images "
                    f"(.jpg/.jpeg/.png/.webp/.bmp), e.g. {report.empty_folders[0]}; they add nothing to training"))
    if report.no_token_folders:
        folder = report.no_token_folders[0]
        out.append(("no-trigger-word", f"{len(report.no_token_folders)} folder(s) have no trigger word after the "
                    f"repeats (e.g. {str(folder)!r}): kohya's folder rule is `<repeats>_<token>[ <class>]`, so "
                    "these images train only on their caption files' text, nothing else ties them to a trigger "
                    "word, and an image without a caption would have an empty prompt (lorakiln refuses it); "
                    f"rename the folder to e.g. `{folder.name}zwx` and put zwx in the captions"))
    if report.missing or report.empty_captions:
        example = (report.missing or report.empty_captions)[0]
        out.append(("missing-caption", f"{report.num_missing_captions} image(s) have no {ext} caption "
                    f"({len(report.missing)} missing, {len(report.empty_captions)} empty), e.g. {example}; "
                    f"they use {report.fallback} instead"))
    if report.other_ext:
        other = report.other_ext[0]
        out.append(("caption-extension", f"{len(report.other_ext)} caption file(s) use {other.suffix!r}, not the "
                    f"configured caption_extension {ext!r} (e.g. {other}); set caption_extension = "
                    f"{other.suffix!r} or rename them"))
    if report.full_name_captions:
        out.append(("caption-name", f"{len(report.full_name_captions)} caption file(s) are named after the full "
                    f"image name (e.g. {report.full_name_captions[0]}); rename `a.png{ext}` to `a{ext}` or they "
                    "are not used"))
    if report.multiline:
        out.append(("multiline-caption", f"{len(report.multiline)} caption file(s) have more than one line "
                    f"(e.g. {report.multiline[0]}); only the first line is used, as in kohya"))
    if report.ignored_images:
        out.append(("unsupported-format", f"{len(report.ignored_images)} file(s) in an unsupported image format "
                    f"are ignored (e.g. {report.ignored_images[0]}); convert them to PNG or JPEG "
                    "(`lorakiln dataset init` does)"))
    if report.unlisted_images:
        out.append(("unlisted-image", f"{len(report.unlisted_images)} image(s) are not listed in the metadata "
                    f"file and are ignored (e.g. {report.unlisted_images[0]}); add a row for each or move them out"))
    return out


def log_warnings(report: ScanReport, ext: str) -> tuple[tuple[str, str], ...]:
    """Log `warning_messages` once each; returns them for `Dataset.scan_warnings`."""
    messages = warning_messages(report, ext)
    for _, message in messages:
        logger.warning("%s", message)
    return tuple(messages)
