"""`scan_dataset`: one entry point that recognises a kohya folder or an ImageFolder.

Users arrive with either layout — kohya_ss GUIs produce `10_token class/` folders, the
diffusers advanced script and its BLIP notebook produce `metadata.jsonl` folders (seed,
"Custom Captioning") — and should not have to say which one it is. The rules are simple and
listed in the error when a folder matches neither, so a user can always see why:

* a `metadata.jsonl` / `metadata.csv` at the top → ImageFolder;
* otherwise subfolders named `<repeats>_...` → kohya;
* otherwise images at the top (captioned by `instance_prompt`) → ImageFolder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from lorakiln.data.dataset import Dataset
from lorakiln.data.files import list_images
from lorakiln.data.imagefolder import (
    DEFAULT_CAPTION_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    check_folder,
    scan_imagefolder,
)
from lorakiln.data.kohya import KOHYA_FOLDER_RE, scan_kohya_dataset
from lorakiln.data.metadata_file import find_metadata_files
from lorakiln.errors import DatasetError
from lorakiln.models.hub_id import looks_like_hub_id

logger = logging.getLogger(__name__)

Layout = Literal["kohya", "imagefolder"]


def detect_layout(path: str | os.PathLike[str]) -> Layout:
    """Which scanner `path` needs; a `DatasetError` explaining both layouts if neither fits."""
    if not Path(path).expanduser().exists() and looks_like_hub_id(str(path)):
        raise DatasetError(f"train_data_dir {str(path)!r} does not exist; if it is a dataset on the Hugging "
                           "Face Hub, set dataset_name to it instead (needs `pip install datasets`)")
    root = check_folder(path, "train_data_dir")
    if find_metadata_files(root):
        return "imagefolder"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if any(KOHYA_FOLDER_RE.fullmatch(p.name) for p in folders):
        return "kohya"
    if list_images(root, recursive=False, skip_hidden=False):
        return "imagefolder"
    shown = ", ".join(repr(p.name) for p in folders[:5])
    found = f"it has subfolders ({shown}) but none is named `<repeats>_<token>`" if folders else "it is empty"
    example = f"`10_{folders[0].name}`" if folders else "`10_zwx`"
    raise DatasetError(
        f"train_data_dir {str(root)!r} is neither a kohya folder nor an ImageFolder: {found}. Use one of:\n"
        f"  - kohya: subfolders named `<repeats>_<token>[ <class>]`, e.g. {example}, holding images and "
        "same-name .txt captions;\n"
        "  - ImageFolder: images directly in the folder, plus metadata.jsonl (one line per image, e.g. "
        '{"file_name": "a.png", "prompt": "photo of TOK"}) or instance_prompt for all of them')


def scan_dataset(path: str | os.PathLike[str], *, caption_extension: str = ".txt",
                 caption_column: str | None = DEFAULT_CAPTION_COLUMN, image_column: str = DEFAULT_IMAGE_COLUMN,
                 instance_prompt: str | None = None, repeats: int = 1,
                 max_workers: int | None = None) -> Dataset:
    """Scan `path` with the scanner its layout needs (see the module docstring).

    Options that only one layout uses are ignored by the other: a kohya folder takes its
    repeats and fallback captions from folder names; an ImageFolder has no caption files.
    """
    if detect_layout(path) == "kohya":
        if repeats != 1:
            logger.warning("repeats = %d is ignored for the kohya folder %s: the number before `_` in each "
                           "subfolder name sets its repeats", repeats, path)
        return scan_kohya_dataset(path, caption_extension, max_workers=max_workers)
    return scan_imagefolder(path, caption_column=caption_column, image_column=image_column,
                            instance_prompt=instance_prompt, repeats=repeats, max_workers=max_workers)
