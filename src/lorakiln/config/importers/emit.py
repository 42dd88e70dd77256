"""Write an imported config as a commented, sectioned run TOML.

`tomli_w` cannot write comments, and the comments are the point here: a header saying where
the file came from and listing every option that was not imported (with the reason), and one
comment per key naming the source option it came from. So the layout is written by hand and
only the values go through `tomli_w` (quoting, escapes, float spelling). Sections and keys
follow the schema's order, as in `docs/config.md`.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import tomli_w

from lorakiln.config.importers.draft import Draft, Entry
from lorakiln.config.schema import SECTIONS

WIDTH = 100
_LABEL = re.compile(r"(?P<name>--[\w.-]+|[\w.-]+) ?= ?(?P<value>.*)")


def toml_value(value: Any) -> str:
    """One TOML value on one line (arrays inline)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


def _same(written: str, value: Any) -> bool:
    if isinstance(value, bool):
        return written.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(written) == float(value)
        except ValueError:
            return False
    return isinstance(value, str) and written == value


def compact_origin(origin: str, key: str, value: Any) -> str:
    """The comment for `key = value`: the source option, shortened to its name when the value
    is unchanged, and dropped when the name is the same too (`seed = 0`, not `# --seed=0`)."""
    if origin in (key, f"--{key}"):
        return ""
    match = _LABEL.fullmatch(origin)
    if not match:
        return origin
    written = match["value"].strip()
    if len(written) > 1 and written[0] == written[-1] == '"':
        try:
            written = str(json.loads(written))  # JSON-escaped (a Windows path's backslashes)
        except ValueError:
            written = written[1:-1]
    if not _same(written, value):
        return origin
    return "" if match["name"].lstrip("-") == key else match["name"]


def _comment(text: str, first: str = "# ", rest: str = "#   ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def _entries(title: str, entries: list[Entry]) -> list[str]:
    if not entries:
        return []
    lines = ["#", f"# {title} ({len(entries)}):"]
    for e in entries:
        lines += _comment(f"{e.option}: {e.reason}", "#   ", "#       ")
    return lines


def render(draft: Draft, *, source: str, fmt_label: str) -> str:
    """The run TOML text: header comments, then `[section]` tables with per-key comments."""
    lines = _comment(f"lorakiln run config imported by `lorakiln config import` from {source} ({fmt_label}).")
    lines += _comment("Check it with `lorakiln train <this file> --dry-run`; every key is explained in "
                      "docs/config.md.")
    for text in draft.header:
        lines += _comment(text)
    if draft.warnings:
        lines += ["#", "# Warnings about the source text:"]
        for text in draft.warnings:
            lines += _comment(text, "#   ", "#     ")
    lines += _entries("Not imported: lorakiln has no equivalent", draft.unmapped)
    lines += _entries("Noted: nothing to set, or read with care", draft.notes)
    if draft.inactive:
        lines += ["#"] + _comment("Off or empty in the source, nothing to import: " + ", ".join(sorted(draft.inactive, key=str.lower)),
                                  "# ", "#   ")
    for section, model in SECTIONS.items():
        values = draft.values.get(section)
        if not values:
            continue
        lines += ["", f"[{section}]"]
        for key in model.model_fields:
            if key in values:
                line = f"{key} = {toml_value(values[key])}"
                origin = " ".join(draft.origins.get(f"{section}.{key}", "").split())
                origin = compact_origin(origin, key, values[key])
                lines.append(f"{line}  # {origin}" if origin else line)
    return "\n".join(lines) + "\n"
