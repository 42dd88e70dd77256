"""Checks shared by every folder scanner (kohya folders, ImageFolder, class images).

Each scanner collects problems into one `ScanReport` and raises a single `DatasetError`
at the end, so a user fixes everything in one go instead of one crash per restart. Soft
issues are counted and logged once per kind (never once per image). Keeping the image and
caption checks here means a kohya folder, a `metadata.jsonl` folder and a class-image folder
reject the same broken file with the same words.

`lorakiln dataset check` wants more than the first failure: it scans inside `collect_problems()`,
where `raise_if_problems` records the problems (with the files each one names) instead of
raising, so the scanner goes on to its soft issues and returns the images it could read, and
one run lists every error and every warning. The scanners themselves need no change for that.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from lorakiln.data.dataset import ImageItem, Subset
from lorakiln.data.files import list_images, read_caption
from lorakiln.data.images import frame_count, probe_image
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


@dataclass(frozen=True)
class Problem:
    """One error of a scan, with the files it names (for `dataset check --json`)."""

    message: str
    paths: tuple[str, ...] = ()


@dataclass
class _Collector:
    problems: list[Problem] = field(default_factory=list)
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # message -> files it is about


_COLLECTOR: ContextVar[_Collector | None] = ContextVar("lorakiln_scan_problems", default=None)


@contextlib.contextmanager
def collect_problems() -> Iterator[list[Problem]]:
    """While active, `raise_if_problems` appends to the yielded list instead of raising.

    Only for reports that list everything (`dataset check`): the scan then returns a dataset of
    the images it could read, which must not be trained on while the list is not empty.
    """
    collector = _Collector()
    token = _COLLECTOR.set(collector)
    try:
        yield collector.problems
    finally:
        _COLLECTOR.reset(token)


def add_problem(report: ScanReport, message: str, *paths: Path) -> None:
    """Record a problem about `paths` (the files are kept for `collect_problems`)."""
    report.problems.append(message)
    collector = _COLLECTOR.get()
    if collector is not None:
        collector.paths[message] = tuple(str(p) for p in paths)


class ScanWarning(tuple[str, str]):
    """A (code, message) pair, as `Dataset.scan_warnings` holds them, plus the files it is about.

    A tuple subclass so every reader of `scan_warnings` (`dict(...)`, `for code, message in`)
    keeps working, while `dataset check --json` can list each warning's files.
    """

    paths: tuple[str, ...]

    def __new__(cls, code: str, message: str, paths: Iterable[Path | str] = ()) -> ScanWarning:
        self = super().__new__(cls, (code, message))
        self.paths = tuple(str(p) for p in paths)
        return self


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
            add_problem(report, f"image {str(path)!r} cannot be read ({size}); re-export it or remove it", path)
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
        add_problem(report, file.error, file.path)
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
            add_problem(report, f"images {names} in {str(paths[0].parent)!r} share the name {paths[0].stem!r}, "
                        "so they would share one caption file; rename or remove all but one", *paths)


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
                add_problem(report, f"image {str(path)!r} has no {ext} caption; {no_caption_fix}", path)
        items.append(ImageItem(path=path, caption=caption, subset_index=index, width=size[0], height=size[1]))
    return Subset(path=folder, repeats=repeats, token=token, class_token=class_token, items=tuple(items))


def raise_if_problems(root: Path, problems: list[str], what: str = "dataset") -> None:
    """One `DatasetError` listing up to `MAX_LISTED_PROBLEMS` problems (the rest counted).

    Inside `collect_problems()` the problems are recorded, each with the files it names, and
    nothing is raised.
    """
    if not problems:
        return
    collector = _COLLECTOR.get()
    if collector is not None:
        collector.problems += [Problem(p, collector.paths.get(p) or paths_named(p, root)) for p in problems]
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{what} {str(root)!r} has {len(problems)} problem(s); fix them all and run again:"]
    lines += [f"  - {p}" for p in listed]
    if len(problems) > len(listed):
        lines.append(f"  ... and {len(problems) - len(listed)} more")
    raise DatasetError("\n".join(lines))


_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"|(?<![\w.])([\w.-]+\.(?:jsonl|csv|txt|caption|png|jpe?g|webp|bmp))\b")


def paths_named(message: str, root: Path | None = None) -> tuple[str, ...]:
    """Existing files and folders a message names: quoted paths, or file names under `root`
    (`metadata.jsonl line 3 ...`). For problems raised without their paths attached."""
    found: list[str] = []
    for match in _QUOTED.finditer(message):
        text = next(g for g in match.groups() if g)
        path = Path(text).expanduser()
        if not path.is_absolute():
            if root is None:
                continue
            path = Path(root) / path
        try:
            exists = path.exists()
        except OSError:  # a name too long for the file system, ...
            exists = False
        if exists and str(path) not in found:
            found.append(str(path))
    return tuple(found)


def shell_quote(path: Path | str) -> str:
    """A path or word as a POSIX shell would need it (`'10_anantn person'`), for fix-it commands
    printed to be copied and pasted."""
    return shlex.quote(str(path))


def _animated(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """(path, frames) of the animated files among `paths`; unreadable ones count as stills."""
    out = []
    for path in paths:
        try:
            frames = frame_count(path)
        except Exception:  # HEIC/AVIF without a plugin, a broken file: not our question here
            frames = 1
        if frames > 1:
            out.append((path, frames))
    return out


def warning_messages(report: ScanReport, ext: str) -> list[ScanWarning]:
    """(code, message) per kind of soft issue, with a count, one example path and every path.

    The same words are logged by the trainer and listed by `lorakiln dataset check`.
    """
    out: list[ScanWarning] = []
    if report.empty_folders:
        out.append(ScanWarning("empty-folder", f"{len(report.empty_folders)} folder(s) have no images "
                               f"(.jpg/.jpeg/.png/.webp/.bmp), e.g. {report.empty_folders[0]}; they add nothing "
                               "to training", report.empty_folders))
    if report.no_token_folders:
        folder = report.no_token_folders[0]
        renamed = folder.with_name(f"{folder.name}zwx")
        out.append(ScanWarning("no-trigger-word", f"{len(report.no_token_folders)} folder(s) have no trigger word "
                               f"after the repeats (e.g. {str(folder)!r}): kohya's folder rule is "
                               "`<repeats>_<token>[ <class>]`, so these images train only on their caption files' "
                               "text, nothing else ties them to a trigger word, and an image without a caption "
                               "would have an empty prompt (lorakiln refuses it); rename the folder to e.g. "
                               f"`{renamed.name}` (`mv {shell_quote(folder)} {shell_quote(renamed)}`) and put zwx "
                               "in the captions",
                               report.no_token_folders))
    if report.missing or report.empty_captions:
        example = (report.missing or report.empty_captions)[0]
        out.append(ScanWarning("missing-caption", f"{report.num_missing_captions} image(s) have no {ext} caption "
                               f"({len(report.missing)} missing, {len(report.empty_captions)} empty), e.g. "
                               f"{example}; they use {report.fallback} instead",
                               [*report.missing, *report.empty_captions]))
    if report.other_ext:
        other = report.other_ext[0]
        out.append(ScanWarning("caption-extension", f"{len(report.other_ext)} caption file(s) use {other.suffix!r}, "
                               f"not the configured caption_extension {ext!r} (e.g. {other}); set "
                               f"caption_extension = {other.suffix!r} or rename them", report.other_ext))
    if report.full_name_captions:
        out.append(ScanWarning("caption-name", f"{len(report.full_name_captions)} caption file(s) are named after "
                               f"the full image name (e.g. {report.full_name_captions[0]}); rename `a.png{ext}` to "
                               f"`a{ext}` or they are not used", report.full_name_captions))
    if report.multiline:
        out.append(ScanWarning("multiline-caption", f"{len(report.multiline)} caption file(s) have more than one "
                               f"line (e.g. {report.multiline[0]}); only the first line is used, as in kohya",
                               report.multiline))
    if report.ignored_images:
        animated = _animated(report.ignored_images)
        frames = (f"; {len(animated)} of them animated ({animated[0][0].name}: {animated[0][1]} frames), of "
                  "which a conversion keeps the first frame only" if animated else "")
        out.append(ScanWarning("unsupported-format", f"{len(report.ignored_images)} file(s) in an unsupported "
                               f"image format are ignored (e.g. {report.ignored_images[0]}); convert them to PNG "
                               f"or JPEG (`lorakiln dataset init` does){frames}", report.ignored_images))
    if report.unlisted_images:
        out.append(ScanWarning("unlisted-image", f"{len(report.unlisted_images)} image(s) are not listed in the "
                               f"metadata file and are ignored (e.g. {report.unlisted_images[0]}); add a row for "
                               "each or move them out", report.unlisted_images))
    return out


def log_warnings(report: ScanReport, ext: str) -> tuple[ScanWarning, ...]:
    """Log `warning_messages` once each; returns them for `Dataset.scan_warnings`."""
    messages = warning_messages(report, ext)
    for _, message in messages:
        logger.warning("%s", message)
    return tuple(messages)
