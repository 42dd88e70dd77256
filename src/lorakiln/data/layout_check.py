"""Cheap dataset facts for `preflight`: folder-name problems and the sample count, from listings.

The scanners (`kohya.py`, `imagefolder.py`) decode every image, which takes a while on a big
folder; `--dry-run`'s first pass only needs names and counts, so it lists folders and reads the
metadata file, nothing more. The rules are the scanners' own (`detect_layout`,
`parse_folder_name`), so the two cannot disagree about a name.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorakiln.data.files import list_images
from lorakiln.data.kohya import parse_folder_name
from lorakiln.data.layout import detect_layout
from lorakiln.data.metadata_file import find_metadata_files, read_metadata


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_name_problems(train_data_dir: str | os.PathLike[str]) -> list[str]:
    """Problems with the kohya folder names under `train_data_dir` (`DatasetError` when it is
    neither a kohya folder nor an ImageFolder, or does not exist)."""
    if detect_layout(train_data_dir) != "kohya":
        return []
    problems = []
    for folder in _subfolders(Path(train_data_dir).expanduser()):
        try:
            parse_folder_name(folder.name)
        except ValueError as exc:
            problems.append(f"folder {str(folder)!r} {exc}")
    return problems


def count_samples(train_data_dir: str | os.PathLike[str], imagefolder_repeats: int = 1) -> int:
    """Images × repeats per epoch as the scanner will count them (unreadable files aside).

    kohya: each well-named folder's images × its repeats. ImageFolder: the metadata file's rows,
    or the images in the folder, × `imagefolder_repeats` (the config's `data.repeats`).
    """
    root = Path(train_data_dir).expanduser()
    if detect_layout(root) == "kohya":
        total = 0
        for folder in _subfolders(root):
            try:
                repeats = parse_folder_name(folder.name)[0]
            except ValueError:
                continue
            total += len(list_images(folder, recursive=False, skip_hidden=False)) * repeats
        return total
    metadata = find_metadata_files(root)
    rows = (len(read_metadata(metadata[0], []).rows) if len(metadata) == 1
            else len(list_images(root, recursive=False, skip_hidden=False)))
    return rows * imagefolder_repeats
