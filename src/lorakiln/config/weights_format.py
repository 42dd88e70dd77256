"""What a weights file really is, from its header: safetensors, a pickle, or neither.

A file's suffix says little: `.bin` is a pickle in old diffusers folders, a renamed `.ckpt` may
be safetensors, and a `.safetensors` download cut short has a header that no longer fits the
file. Reading the header (never the tensors) answers it in milliseconds, so `--dry-run` can
refuse a pickle or a broken file before a model is loaded.

The safetensors structure is checked by `lorakiln.safetensors_check.read_layout`, the one check
every reader shares (format spec rules, header ≤ 100 MB, tensors tiling the data). Only a file
that fails it is tested for pickle magic — a zip archive (`torch.save`) or the PROTO opcode 0x80
with protocol 2–5 (Python's `pickletools` docs) — because a valid safetensors header of, say,
640 bytes starts with the same two bytes 0x80 0x02.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakiln.errors import FileFormatError

Kind = Literal["safetensors", "pickle", "unknown"]


@dataclass(frozen=True)
class WeightsFormat:
    """`kind` of the file; `detail` in words; `problem`: why it is no valid safetensors file."""

    kind: Kind
    detail: str
    problem: str | None = None


def sniff_weights(path: Path) -> WeightsFormat:
    """Classify `path` by its header (an `OSError` if it cannot be read)."""
    from lorakiln.safetensors_check import looks_like_pickle, read_layout

    try:
        read_layout(path)
    except FileFormatError as exc:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head.startswith(b"PK\x03\x04"):
            return WeightsFormat("pickle", "a zip archive as written by torch.save, which holds a pickle")
        if looks_like_pickle(head):
            return WeightsFormat("pickle", f"a Python pickle (protocol {head[1]})")
        return WeightsFormat("unknown", "neither a safetensors file nor a pickle", str(exc))
    return WeightsFormat("safetensors", "a safetensors file")
