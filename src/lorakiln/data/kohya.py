"""Scan a kohya-style training folder: `train_dir/<repeats>_<token>[ <class>]/image + caption`.

Everything a user can get wrong in the folder is checked here, before any model is loaded,
and *all* problems are reported in one `DatasetError` so they can be fixed in one go instead
of one crash per restart (the most common complaint about other trainers). Soft problems —
missing captions, empty folders, captions with another extension — are logged warnings on
the "lorakiln" logger, one line per kind with a count, never one line per image.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.data.dataset import IMAGE_EXTENSIONS, Dataset, ImageItem, Subset
from lorakiln.data.images import probe_image
from lorakiln.errors import DatasetError

logger = logging.getLogger(__name__)

#: Caption extensions used by common tools; a file with one of these that is *not* the
#: configured extension is almost always a misconfiguration (kohya_ss defaults to ".caption"
#: in some versions and ".txt" in others).
KNOWN_CAPTION_EXTENSIONS: tuple[str, ...] = (".txt", ".caption", ".tags", ".cap")
#: Image formats people drop in that we do not train on; reported so they are not silently lost.
_IGNORED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl"})
#: At most this many problems are listed in one error; the rest are counted.
MAX_LISTED_PROBLEMS = 25
_FOLDER_RE = re.compile(r"(?P<repeats>[^_]*)_(?P<rest>.*)", re.DOTALL)


@dataclass
class _Report:
    """Problems (errors) and counted soft issues collected during one scan."""

    folder_problems: list[str] = field(default_factory=list)  # listed first: fix structure first
    problems: list[str] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    empty_captions: list[Path] = field(default_factory=list)
    multiline: list[Path] = field(default_factory=list)
    other_ext: list[Path] = field(default_factory=list)
    full_name_captions: list[Path] = field(default_factory=list)
    ignored_images: list[Path] = field(default_factory=list)


def normalize_caption_extension(ext: str) -> str:
    """Accept "txt" or ".txt" (kohya requires the dot; forgetting it is a classic mistake)."""
    ext = ext.strip()
    return ext if ext.startswith(".") else f".{ext}"


def parse_folder_name(name: str) -> tuple[int, str, str | None]:
    """Split `"10_zwx toy"` into (10, "zwx", "toy"), as kohya's `name.split("_")` does.

    Everything after the first "_" is the folder caption; its first word is the token and
    the rest (if any) the class. Raises `ValueError` with the user-facing reason.
    """
    match = _FOLDER_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"has no `<repeats>_` prefix; rename it to e.g. `10_{name}` "
                         "(10 = how many times each image is seen per epoch)")
    raw = match["repeats"]
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"repeats {raw!r} is not a whole number; rename it to e.g. `10_{match['rest']}`")
    repeats = int(raw)
    if repeats < 1:
        raise ValueError(f"repeats is {repeats}; use at least 1, e.g. `1_{match['rest']}`")
    words = match["rest"].strip().split(None, 1)
    token = words[0] if words else ""
    return repeats, token, (words[1] if len(words) > 1 else None)


def scan_kohya_dataset(train_dir: str | os.PathLike[str], caption_extension: str = ".txt",
                       *, max_workers: int | None = None) -> Dataset:
    """Scan, validate and return the dataset under `train_dir`; raise one `DatasetError`.

    Images are fully decoded once (in a thread pool; Pillow releases the GIL) to catch
    unreadable or truncated files now rather than hours into training.
    """
    root = Path(train_dir).expanduser()
    if not root.exists():
        raise DatasetError(f"train_data_dir {str(root)!r} does not exist; check the path in your config")
    if not root.is_dir():
        raise DatasetError(f"train_data_dir {str(root)!r} is a file, not a folder; point it at the "
                           "folder that holds the `<repeats>_<token>` subfolders")
    root = root.resolve()
    ext = normalize_caption_extension(caption_extension)
    report = _Report()
    top_images = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if top_images:
        report.folder_problems.append(
            f"{len(top_images)} image(s) lie directly in {root} (e.g. {top_images[0].name!r}) and would be "
            "ignored; move them into a subfolder named `<repeats>_<token>`, e.g. `10_zwx`")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    workers = max_workers or min(8, os.cpu_count() or 1)
    subsets: list[Subset] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for folder in folders:
            subset = _scan_folder(folder, len(subsets), ext, report, pool)
            if subset is not None:
                subsets.append(subset)
    problems = report.folder_problems + report.problems
    if not any(s.items for s in subsets) and not problems:
        names = ", ".join(p.name for p in folders[:5]) or "no subfolders"
        problems.append(
            f"no images found in {root} (looked in: {names}); put .jpg/.jpeg/.png/.webp/.bmp files "
            "into subfolders named like `10_zwx`")
    _raise_if_problems(root, problems)
    _log_warnings(report, ext)
    return Dataset(root=root, subsets=tuple(subsets), caption_extension=ext,
                   num_missing_captions=len(report.missing) + len(report.empty_captions))


def _scan_folder(folder: Path, index: int, ext: str, report: _Report,
                 pool: ThreadPoolExecutor) -> Subset | None:
    """Scan one concept folder; keep going after a naming problem to report more at once."""
    try:
        repeats, token, class_token = parse_folder_name(folder.name)
        name_ok = True
    except ValueError as exc:
        report.folder_problems.append(f"folder {str(folder)!r} {exc}")
        repeats, token, class_token, name_ok = 1, "", None, False
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    report.ignored_images += [p for p in files if p.suffix.lower() in _IGNORED_IMAGE_EXTENSIONS]
    if not images:
        logger.warning("folder %s has no images (.jpg/.jpeg/.png/.webp/.bmp); it adds nothing to "
                       "training", folder)
    _check_duplicate_stems(images, report)
    _check_other_caption_files(files, images, ext, report)
    subset = Subset(path=folder, repeats=repeats, token=token, class_token=class_token, items=())
    sizes = pool.map(_probe_or_message, images)
    items: list[ImageItem] = []
    for path, size in zip(images, sizes, strict=True):
        if isinstance(size, str):
            report.problems.append(f"image {str(path)!r} cannot be read ({size}); re-export it or remove it")
            continue
        caption = _read_caption(path, ext, report)
        if caption is None:
            caption = subset.fallback_caption
        items.append(ImageItem(path=path, caption=caption, subset_index=index,
                               width=size[0], height=size[1]))
    if not name_ok:
        return None
    return Subset(path=folder, repeats=repeats, token=token, class_token=class_token, items=tuple(items))


def _probe_or_message(path: Path) -> tuple[int, int] | str:
    """Size of the image, or the reason it cannot be decoded (any Pillow failure)."""
    try:
        return probe_image(path)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(exc).__name__}: {exc}"


def _read_caption(image: Path, ext: str, report: _Report) -> str | None:
    """First line of the caption file (kohya reads `lines[0].strip()`), or None if absent/empty.

    A UTF-8 BOM (Windows Notepad) is stripped by the `utf-8-sig` codec. An empty file is
    treated like a missing one — a captioner that crashed mid-run should not silently
    train images with no trigger word.
    """
    path = image.with_suffix(ext)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        report.missing.append(image)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.problems.append(
            f"caption {str(path)!r} is not UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start}); "
            "re-save it as UTF-8")
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        report.empty_captions.append(path)
        return None
    if len(lines) > 1:
        report.multiline.append(path)
    return lines[0]


def _check_duplicate_stems(images: Iterable[Path], report: _Report) -> None:
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


def _check_other_caption_files(files: list[Path], images: list[Path], ext: str, report: _Report) -> None:
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


def _raise_if_problems(root: Path, problems: list[str]) -> None:
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"dataset {str(root)!r} has {len(problems)} problem(s); fix them all and run again:"]
    lines += [f"  - {p}" for p in listed]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more")
    raise DatasetError("\n".join(lines))


def _log_warnings(report: _Report, ext: str) -> None:
    """One warning per kind of soft issue, with a count and one example path."""
    if report.missing or report.empty_captions:
        example = (report.missing or report.empty_captions)[0]
        logger.warning("%d image(s) have no %s caption (%d missing, %d empty), e.g. %s; they use their "
                       "folder's caption `<token> <class>` instead",
                       len(report.missing) + len(report.empty_captions), ext, len(report.missing),
                       len(report.empty_captions), example)
    if report.other_ext:
        other = report.other_ext[0]
        logger.warning("%d caption file(s) use %r, not the configured caption_extension %r (e.g. %s); "
                       "set caption_extension = %r or rename them", len(report.other_ext),
                       other.suffix, ext, other, other.suffix)
    if report.full_name_captions:
        logger.warning("%d caption file(s) are named after the full image name (e.g. %s); rename "
                       "`a.png%s` to `a%s` or they are not used", len(report.full_name_captions),
                       report.full_name_captions[0], ext, ext)
    if report.multiline:
        logger.warning("%d caption file(s) have more than one line (e.g. %s); only the first line is "
                       "used, as in kohya", len(report.multiline), report.multiline[0])
    if report.ignored_images:
        logger.warning("%d file(s) in an unsupported image format are ignored (e.g. %s); convert them to "
                       "PNG or JPEG", len(report.ignored_images), report.ignored_images[0])
