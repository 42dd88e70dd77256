"""Class ("regularisation") images for DreamBooth prior preservation (Ruiz et al. 2023, §3.3).

Prior preservation trains on the model's own samples of the *class* ("a photo of a dog")
next to the instance images, so the LoRA learns the subject without forgetting what the class
looks like ("Prior preservation loss" in the diffusers advanced SDXL recipe). Two spellings of the same feature exist:

* diffusers: `class_data_dir` of images (generated with `class_prompt` when fewer than
  `num_class_images` are present) — images directly in the folder, each with an optional
  same-stem caption, else `class_prompt`;
* kohya: `reg_data_dir` with `<repeats>_<class>` subfolders, captioned like training folders.

`scan_class_images` accepts both, even mixed in one folder. Generation itself needs the base
model and is the trainer's job; this module does the bookkeeping around it: how many images are
missing, atomic writes with a caption file each, and a `class_images.json` manifest recording
the prompt and base model, so a second run reuses the images and warns if they came from a
different prompt or model.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from lorakiln.atomic import write_bytes_atomic, write_text_atomic
from lorakiln.data.dataset import Dataset, Subset
from lorakiln.data.files import list_images
from lorakiln.data.imagefolder import check_folder
from lorakiln.data.kohya import KOHYA_FOLDER_RE, scan_kohya_subset
from lorakiln.data.scan_common import (
    ScanReport,
    log_warnings,
    normalize_caption_extension,
    raise_if_problems,
    scan_captioned_folder,
)
from lorakiln.errors import DatasetError

logger = logging.getLogger(__name__)

MANIFEST = "class_images.json"


def _reg_folders(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir() if p.is_dir() and KOHYA_FOLDER_RE.fullmatch(p.name))


def count_class_images(class_dir: str | os.PathLike[str]) -> int:
    """Images directly in `class_dir` plus those in its `<repeats>_<class>` subfolders (no decoding)."""
    root = Path(class_dir).expanduser()
    if not root.is_dir():
        return 0
    folders = [root, *_reg_folders(root)]
    return sum(len(list_images(p, recursive=False, skip_hidden=False)) for p in folders)


def read_class_manifest(class_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of generated images, or None when absent or unreadable."""
    path = Path(class_dir).expanduser() / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def missing_class_images(class_dir: str | os.PathLike[str], num_class_images: int, *,
                         prompt: str | None = None, base_model: str | None = None) -> int:
    """How many class images still have to be generated (0 = reuse what is there).

    diffusers' rule: generate only if the folder holds fewer than `num_class_images`. With
    `prompt`/`base_model`, a warning says when the reused images were generated differently —
    they are still used, as diffusers would, because the user may have chosen them on purpose.
    """
    if num_class_images < 0:
        raise ValueError(f"num_class_images must be >= 0, got {num_class_images}")
    have = count_class_images(class_dir)
    manifest = read_class_manifest(class_dir)
    if manifest and have:
        for key, wanted in (("prompt", prompt), ("base_model", base_model)):
            old = manifest.get(key)
            if wanted is not None and old is not None and old != wanted:
                logger.warning("class_data_dir %s holds %d image(s) generated with %s %r, not %r; they are "
                               "reused. Empty the folder (or pick another) to regenerate them",
                               class_dir, manifest.get("count", have), key, old, wanted)
    return max(0, num_class_images - have)


def write_class_images(class_dir: str | os.PathLike[str], images: list[Image.Image], prompt: str,
                       start_index: int, *, base_model: str | None = None) -> list[Path]:
    """Save generated `images` as `class_NNNNN.png` + `.txt` (the prompt), update the manifest.

    Numbering starts at `start_index` (pass the count already there) and skips names that
    exist, so nothing is ever overwritten. Each file is written atomically and the caption is
    written *before* its image: only images are counted, so an interrupted run leaves at most
    a stray caption and simply generates the rest next time.
    """
    root = Path(class_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    # a stray caption from a crash is ours to overwrite
    taken = {p.stem for p in list_images(root, recursive=False, skip_hidden=False)}
    written: list[Path] = []
    index = start_index
    for image in images:
        while f"class_{index:05d}" in taken:
            index += 1
        stem = f"class_{index:05d}"
        taken.add(stem)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")  # lossless: no JPEG artefacts to learn
        write_text_atomic(root / f"{stem}.txt", prompt + "\n")
        write_bytes_atomic(root / f"{stem}.png", buffer.getvalue())
        written.append(root / f"{stem}.png")
    _update_manifest(root, prompt, base_model, [p.name for p in written])
    return written


def _update_manifest(root: Path, prompt: str, base_model: str | None, new_files: list[str]) -> None:
    old = read_class_manifest(root) or {}
    files = [f for f in old.get("files", []) if (root / f).is_file()] + new_files
    manifest = {"prompt": prompt, "base_model": base_model, "count": len(files), "files": files}
    if old.get("prompt") not in (None, prompt) or old.get("base_model") not in (None, base_model):
        manifest["previous"] = {k: old.get(k) for k in ("prompt", "base_model", "count")}
    write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def scan_class_images(class_dir: str | os.PathLike[str], class_prompt: str | None = None, *,
                      caption_extension: str = ".txt", num_class_images: int | None = None,
                      max_workers: int | None = None) -> Dataset:
    """Scan class images (flat `class_data_dir` and/or kohya `<repeats>_<class>` subfolders).

    Flat images use a same-stem caption, else `class_prompt` (diffusers uses `class_prompt`
    for all; a caption file wins so hand-picked real images can be described). Subfolders
    behave as in kohya's `reg_data_dir`. With `num_class_images`, only the first that many
    distinct images (sorted: flat ones first) are kept — diffusers' `min(len, class_num)`.
    """
    root = check_folder(class_dir, "class_data_dir")
    ext = normalize_caption_extension(caption_extension)
    prompt = (class_prompt or "").strip()
    report = ScanReport(fallback=f"class_prompt {prompt!r}" if prompt else "their folder name")
    subsets: list[Subset] = []
    with ThreadPoolExecutor(max_workers=max_workers or min(8, os.cpu_count() or 1)) as pool:
        if list_images(root, recursive=False, skip_hidden=False):
            subsets.append(scan_captioned_folder(
                root, index=0, repeats=1, token=prompt, class_token=None, ext=ext, report=report, pool=pool,
                no_caption_fix="add a caption file or set class_prompt"))
        for folder in _reg_folders(root):
            subset = scan_kohya_subset(folder, len(subsets), ext, report, pool)
            if subset is not None:
                subsets.append(subset)
    problems = report.folder_problems + report.problems
    if not any(s.items for s in subsets) and not problems:
        problems.append(f"no class images in {root}; set num_class_images so they are generated with "
                        "class_prompt, or put images there (or in `<repeats>_<class>` subfolders)")
    raise_if_problems(root, problems, what="class_data_dir")
    log_warnings(report, ext)
    if num_class_images is not None:
        subsets = _keep_first(subsets, num_class_images)
    return Dataset(root=root, subsets=tuple(subsets), caption_extension=ext,
                   num_missing_captions=report.num_missing_captions)


def _keep_first(subsets: list[Subset], limit: int) -> list[Subset]:
    if limit < 1:
        raise DatasetError(f"num_class_images is {limit}; use at least 1 with prior preservation")
    kept: list[Subset] = []
    for subset in subsets:
        room = limit - sum(len(s.items) for s in kept)
        if room <= 0:
            break
        kept.append(replace(subset, items=subset.items[:room]))
    return kept
