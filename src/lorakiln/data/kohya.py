"""Scan a kohya-style training folder: `train_dir/<repeats>_<token>[ <class>]/image + caption`.

Everything a user can get wrong in the folder is checked here, before any model is loaded,
and *all* problems are reported in one `DatasetError` so they can be fixed in one go instead
of one crash per restart (the most common complaint about other trainers). Soft problems —
missing captions, empty folders, captions with another extension — are logged warnings on
the "lorakiln" logger, one line per kind with a count, never one line per image. The image
and caption checks themselves live in `scan_common`, shared with the other scanners.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lorakiln.data.dataset import Dataset, Subset
from lorakiln.data.files import list_images
from lorakiln.data.scan_common import (
    MAX_LISTED_PROBLEMS,
    ScanReport,
    log_warnings,
    normalize_caption_extension,
    raise_if_problems,
    scan_captioned_folder,
)
from lorakiln.errors import DatasetError

logger = logging.getLogger(__name__)

_FOLDER_RE = re.compile(r"(?P<repeats>[^_]*)_(?P<rest>.*)", re.DOTALL)
#: A folder name that starts like kohya's `<repeats>_`: what `scan_dataset` looks for. A sign is
#: accepted here so `-3_zwx` is recognised as a kohya folder with a bad repeat count (and named in
#: the error) rather than as a stray folder.
KOHYA_FOLDER_RE = re.compile(r"[+-]?\d+_.*", re.DOTALL)

__all__ = ["KOHYA_FOLDER_RE", "MAX_LISTED_PROBLEMS", "normalize_caption_extension", "parse_folder_name",
           "scan_kohya_dataset", "scan_kohya_subset"]


def parse_folder_name(name: str) -> tuple[int, str, str | None]:
    """Split `"10_zwx toy"` into (10, "zwx", "toy"), as kohya's `name.split("_")` does.

    Everything after the first "_" is the folder caption; its first word is the token and
    the rest (if any) the class. Raises `ValueError` with the user-facing reason.
    """
    match = _FOLDER_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"has no `<repeats>_` prefix; rename it to e.g. `10_{name}` "
                         "(10 = how many times each image is seen per epoch)")
    raw, rest = match["repeats"], match["rest"]
    signed = raw[1:] if raw[:1] in "+-" else raw
    if not (signed.isascii() and signed.isdigit()):
        raise ValueError(f"repeats {raw!r} is not a whole number; rename it to e.g. `10_{rest}`")
    repeats = int(raw)
    if repeats < 1:  # kohya's int() accepts "+3" as 3, so does this
        example = f"{abs(repeats)}_{rest}" if repeats else f"1_{rest}"
        raise ValueError(f"has repeats {raw}; the number before `_` is how many times each image is seen per "
                         f"epoch and must be a positive whole number, e.g. `{example}`")
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
    report = ScanReport()
    top_images = list_images(root, recursive=False, skip_hidden=False)
    if top_images:
        report.folder_problems.append(
            f"{len(top_images)} image(s) lie directly in {root} (e.g. {top_images[0].name!r}) and would be "
            "ignored; move them into a subfolder named `<repeats>_<token>`, e.g. `10_zwx`")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    workers = max_workers or min(8, os.cpu_count() or 1)
    subsets: list[Subset] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for folder in folders:
            subset = scan_kohya_subset(folder, len(subsets), ext, report, pool)
            if subset is not None:
                subsets.append(subset)
    problems = report.folder_problems + report.problems
    if not any(s.items for s in subsets) and not problems:
        names = ", ".join(p.name for p in folders[:5]) or "no subfolders"
        problems.append(
            f"no images found in {root} (looked in: {names}); put .jpg/.jpeg/.png/.webp/.bmp files "
            "into subfolders named like `10_zwx`")
    raise_if_problems(root, problems)
    warnings = log_warnings(report, ext)
    return Dataset(root=root, subsets=tuple(subsets), caption_extension=ext,
                   num_missing_captions=report.num_missing_captions, scan_warnings=warnings)




def scan_kohya_subset(folder: Path, index: int, ext: str, report: ScanReport,
                      pool: ThreadPoolExecutor) -> Subset | None:
    """Scan one `<repeats>_<token>[ <class>]` folder; None (and a problem) if its name is wrong.

    A misnamed folder is still scanned, so its unreadable images are reported in the same run.
    Also used for kohya `reg_data_dir` folders of class images (`class_images.py`).
    """
    try:
        repeats, token, class_token = parse_folder_name(folder.name)
        name_ok = True
    except ValueError as exc:
        report.folder_problems.append(f"folder {str(folder)!r} {exc}")
        repeats, token, class_token, name_ok = 1, "", None, False
    if not list_images(folder, recursive=False, skip_hidden=False):
        report.empty_folders.append(folder)
    elif name_ok and not token:
        report.no_token_folders.append(folder)
    subset = scan_captioned_folder(
        folder, index=index, repeats=repeats, token=token, class_token=class_token, ext=ext, report=report,
        pool=pool, no_caption_fix=f"add one, or put the trigger word in the folder name (`{repeats}_<token>`)")
    return subset if name_ok else None
