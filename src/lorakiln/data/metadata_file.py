"""Read an ImageFolder `metadata.jsonl` / `metadata.csv` into rows with line numbers.

This is the layout the HF `datasets` ImageFolder builder reads and the one the
"Custom Captioning" section of the diffusers advanced SDXL recipe asks users to write by hand or with the BLIP notebook: one row per
image, a `file_name` column relative to the folder, and a caption column (`prompt` in the
recipe's example dataset, `text` in the datasets docs). We parse it ourselves rather than through
`datasets` so that a local folder needs no extra dependency and every mistake can be reported
with the file name and line number, all at once, before a model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

#: File names the ImageFolder builder recognises, in the order we look for them.
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")


@dataclass(frozen=True)
class MetadataRow:
    """One row; `line` is 1-based, as an editor shows it (for CSV: the line the row ends on)."""

    line: int
    values: dict[str, object]


@dataclass(frozen=True)
class MetadataTable:
    """All readable rows and the columns seen, in first-seen order."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[MetadataRow, ...]


def find_metadata_files(folder: Path) -> list[Path]:
    """The metadata files present directly in `folder` (more than one is an error upstream)."""
    return [folder / name for name in METADATA_FILES if (folder / name).is_file()]


def read_metadata(path: Path, problems: list[str]) -> MetadataTable:
    """Parse `path`; bad lines are appended to `problems` (and skipped) instead of raising."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM from Excel / Notepad is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(f"{path.name} line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        "re-save the file as UTF-8")
        return MetadataTable(path, (), ())
    parse = _csv_rows if path.suffix == ".csv" else _jsonl_rows
    rows = parse(path, text, problems)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row.values))
    return MetadataTable(path, tuple(columns), tuple(rows))


def _jsonl_rows(path: Path, text: str, problems: list[str]) -> list[MetadataRow]:
    """One JSON object per line; blank lines are allowed (editors add a trailing one)."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            'each line must be one object such as {"file_name": "a.png", "prompt": "..."}')
            continue
        if not isinstance(value, dict):
            problems.append(f"{path.name} line {number} is a JSON {type(value).__name__}, not an object; "
                            'write {"file_name": "a.png", "prompt": "..."}')
            continue
        rows.append(MetadataRow(number, value))
    if not rows and not problems:
        problems.append(f"{path.name} has no rows; add one JSON object per image")
    return rows


def _csv_rows(path: Path, text: str, problems: list[str]) -> list[MetadataRow]:
    """A header row, then one row per image (comma-separated, quotes as Excel writes them)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip() for cell in next(reader)]
    except StopIteration:
        problems.append(f"{path.name} is empty; its first line must be a header such as `file_name,prompt`")
        return []
    except csv.Error as exc:
        problems.append(f"{path.name} line 1 cannot be parsed ({exc})")
        return []
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates or not all(header):
        problems.append(f"{path.name} line 1: the header has empty or repeated column names "
                        f"({', '.join(map(repr, duplicates)) or 'an empty name'}); give every column a unique name")
        return []
    rows = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{path.name} line {reader.line_num} cannot be parsed ({exc})")
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            problems.append(f"{path.name} line {reader.line_num} has {len(cells)} field(s) but the header has "
                            f"{len(header)}; quote captions that contain commas (\"a, b\")")
            continue
        rows.append(MetadataRow(reader.line_num, dict(zip(header, cells, strict=True))))
    if not rows and not problems:
        problems.append(f"{path.name} has a header but no rows; add one row per image")
    return rows
