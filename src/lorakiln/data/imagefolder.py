"""Scan an ImageFolder dataset: images plus `metadata.jsonl` / `metadata.csv` (or one prompt).

The "Custom Captioning" recipe of the Hugging Face blog "LoRA training scripts of the world,
unite!" (diffusers `train_dreambooth_lora_sdxl_advanced.py`)
reads a folder in the HF `datasets` ImageFolder layout — one metadata row per image with
`file_name` and a caption column, `--caption_column=prompt` — and without captions trains every
image on `--instance_prompt`. Its `--repeats` repeats each image before shuffling, which is
exactly a kohya subset's repeats, so the result is the same `Dataset` a kohya folder gives:
one `Subset` (the folder) with `repeats`, and everything downstream (buckets, steps, tag
frequency, `ss_dataset_dirs`) works unchanged.

Checks match the kohya scanner (shared `scan_common` helpers): every image is decoded up
front, and all problems — a row naming a missing file, a misspelled caption column, a line
that is not JSON — are reported together with the file and line number.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from lorakiln.data.dataset import IMAGE_EXTENSIONS, Dataset, ImageItem, Subset
from lorakiln.data.files import list_images
from lorakiln.data.metadata_file import MetadataRow, MetadataTable, find_metadata_files, read_metadata
from lorakiln.data.scan_common import (
    ScanReport,
    log_warnings,
    nearest,
    probe_images,
    raise_if_problems,
)
from lorakiln.errors import ConfigError, DatasetError

#: diffusers' default `--caption_column` is None; the recipe's example dataset uses "prompt".
DEFAULT_CAPTION_COLUMN = "prompt"
#: The ImageFolder builder's column for the image path, relative to the metadata file.
DEFAULT_IMAGE_COLUMN = "file_name"

_Entry = tuple[Path, str | None]  # image path, caption (None = use instance_prompt)


def check_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Resolve `path`, or raise a `DatasetError` saying it is missing or a file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{what} {str(root)!r} does not exist; check the path in your config")
    if not root.is_dir():
        raise DatasetError(f"{what} {str(root)!r} is a file, not a folder of images")
    return root.resolve()


def scan_imagefolder(root: str | os.PathLike[str], *, caption_column: str | None = DEFAULT_CAPTION_COLUMN,
                     image_column: str = DEFAULT_IMAGE_COLUMN, instance_prompt: str | None = None,
                     repeats: int = 1, max_workers: int | None = None) -> Dataset:
    """Scan, validate and return the ImageFolder dataset at `root`; raise one `DatasetError`.

    Captions come from `caption_column` of the metadata file. `instance_prompt` is used for
    every image when there is no metadata file, when `caption_column` is None/"" or the
    metadata has no column besides `image_column`, and for rows whose caption is empty.
    A named `caption_column` missing from a metadata file that has other columns is an error
    (a typo should not silently train every image on one prompt).
    """
    root = check_folder(root, "train_data_dir")
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    instance_prompt = (instance_prompt or "").strip() or None
    report = ScanReport(fallback=f"instance_prompt {instance_prompt!r}")
    metadata = find_metadata_files(root)
    on_disk = list_images(root, recursive=False, skip_hidden=False)
    if len(metadata) > 1:
        report.folder_problems.append(f"{root} holds both {metadata[0].name} and {metadata[1].name}; "
                                      "keep one (the `datasets` ImageFolder loader refuses both too)")
        entries: list[_Entry] = []
    elif metadata:
        table = read_metadata(metadata[0], report.problems)
        entries = _entries(table, root, caption_column or None, image_column, instance_prompt, report)
        listed = {path for path, _ in entries}
        report.unlisted_images += [p for p in on_disk if p not in listed]
    else:
        if instance_prompt is None:
            report.folder_problems.append(
                f"{root} has no metadata.jsonl or metadata.csv and no instance_prompt is set, so its images "
                f"have no captions; either add metadata.jsonl with one line per image, e.g. "
                f'{{"{image_column}": "a.png", "{caption_column or DEFAULT_CAPTION_COLUMN}": "photo of TOK"}}, '
                "or set instance_prompt to caption every image with it")
        entries = [(path, None) for path in on_disk]
    items = _probe(entries, instance_prompt, report, max_workers)
    problems = report.folder_problems + report.problems
    if not items and not problems:
        problems.append(f"no images found in {root}; put .jpg/.jpeg/.png/.webp/.bmp files there "
                        "(with metadata.jsonl or instance_prompt)")
    raise_if_problems(root, problems)
    warnings = log_warnings(report, f"{caption_column!r}")
    subset = Subset(path=root, repeats=repeats, token=instance_prompt or "", class_token=None, items=tuple(items))
    source = metadata[0].name if metadata else ""
    return Dataset(root=root, subsets=(subset,), caption_extension=source,
                   num_missing_captions=report.num_missing_captions, scan_warnings=warnings)


def _entries(table: MetadataTable, root: Path, caption_column: str | None, image_column: str,
             instance_prompt: str | None, report: ScanReport) -> list[_Entry]:
    """Rows → (image path, caption) with every row problem recorded; bad rows are skipped."""
    name = table.path.name
    if table.rows and image_column not in table.columns:
        report.folder_problems.append(_missing_column(name, image_column, "image_column", table.columns))
        return []
    use_captions = caption_column is not None and caption_column in table.columns
    if caption_column is not None and not use_captions and set(table.columns) - {image_column}:
        report.folder_problems.append(
            _missing_column(name, caption_column, "caption_column", table.columns)
            + ' Or set caption_column = "" to caption every image with instance_prompt')
        return []
    if not use_captions and instance_prompt is None and table.rows:
        report.folder_problems.append(
            f"{name} has no caption column and no instance_prompt is set; add a "
            f"{caption_column or DEFAULT_CAPTION_COLUMN!r} column or set instance_prompt")
        return []
    seen: dict[Path, int] = {}
    entries: list[_Entry] = []
    for row in table.rows:
        path = _row_image(row, name, root, image_column, report)
        if path is None:
            continue
        if path in seen:
            report.problems.append(f"{name} lines {seen[path]} and {row.line} both name "
                                   f"{row.values[image_column]!r}; keep one row per image")
            continue
        seen[path] = row.line
        caption = _row_caption(row, name, caption_column, path, instance_prompt, report) if use_captions else None
        entries.append((path, caption))
    return entries


def _missing_column(file: str, column: str, option: str, columns: tuple[str, ...]) -> str:
    hint = nearest(column, columns)
    listed = ", ".join(repr(c) for c in columns) or "none"
    suggestion = f"; did you mean {option} = {hint!r}?" if hint else f"; set {option} to one of them."
    return f"{file} has no column {column!r} ({option}); its columns are {listed}{suggestion}"


def _row_image(row: MetadataRow, file: str, root: Path, column: str, report: ScanReport) -> Path | None:
    """The existing image a row names (relative to the folder, `/` separators), else None."""
    value = row.values.get(column)
    if not isinstance(value, str) or not value.strip():
        report.problems.append(f"{file} line {row.line} has no {column!r} value; name the image file, e.g. \"a.png\"")
        return None
    relative = PurePosixPath(value.strip().replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        report.problems.append(f"{file} line {row.line}: {value!r} must be a path inside {root}, relative to it")
        return None
    path = root.joinpath(*relative.parts)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        report.problems.append(f"{file} line {row.line}: {value!r} is not a .jpg/.jpeg/.png/.webp/.bmp image")
        return None
    if not path.is_file():
        siblings = list_images(path.parent, recursive=False, skip_hidden=False) if path.parent.is_dir() else []
        candidates = [p.name for p in siblings]
        hint = nearest(path.name, candidates)
        report.problems.append(f"{file} line {row.line} names {value!r}, which does not exist in "
                               f"{str(path.parent)!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        return None
    return path


def _row_caption(row: MetadataRow, file: str, column: str | None, path: Path, instance_prompt: str | None,
                 report: ScanReport) -> str | None:
    """The row's caption; None (→ instance_prompt, counted) when empty; a problem if unusable."""
    assert column is not None
    value = row.values.get(column)
    if value is not None and not isinstance(value, str):
        report.problems.append(f"{file} line {row.line}: {column!r} is a {type(value).__name__}, not text")
        return None
    caption = (value or "").strip()
    if caption:
        return caption
    if instance_prompt is None:
        report.problems.append(f"{file} line {row.line}: {column!r} is empty; write a caption or set "
                               "instance_prompt to use for images without one")
    else:
        report.missing.append(path)
    return None


def _probe(entries: list[_Entry], instance_prompt: str | None, report: ScanReport,
           max_workers: int | None) -> list[ImageItem]:
    """Decode each listed image once (errors recorded) and build the items."""
    paths = [path for path, _ in entries]
    captions = {path: caption for path, caption in entries}
    items: list[ImageItem] = []
    with ThreadPoolExecutor(max_workers=max_workers or min(8, os.cpu_count() or 1)) as pool:
        for path, size in probe_images(paths, report, pool):
            if size is not None:
                caption = captions[path] or instance_prompt or ""
                items.append(ImageItem(path=path, caption=caption, subset_index=0,
                                       width=size[0], height=size[1]))
    return items
