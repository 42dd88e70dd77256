"""Reading a LoRA file's safetensors header: shapes, dtypes, metadata and single scalars.

Only the header and the few bytes of each ``alpha`` are read, so inspecting a 1 GB file costs no
more than a 10 MB one and loads no tensors; pickled files are refused, never opened (unpickling
runs code the file chooses). What the keys mean is `modules`' job.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from lorakiln.errors import FileFormatError, LorakilnError
from lorakiln.networks.export import DIFFUSERS_WEIGHT_NAME
from lorakiln.safetensors_check import Layout, TensorSpan, looks_like_pickle, read_layout

# --------------------------------------------------------------------------------------------
# safetensors header
# --------------------------------------------------------------------------------------------

#: safetensors dtype codes → torch-style names.
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}  # fmt: skip


#: The checked header of `safetensors_check` under the names this package has always used.
SafetensorsHeader = Layout
TensorEntry = TensorSpan


_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl"})


def _pickle_kind(path: Path, head: bytes) -> str | None:
    """What kind of pickle a file that is not a readable safetensors file is, by its magic bytes,
    else by its suffix (a `.bin` can be either)."""
    if looks_like_pickle(head):
        return "a zip-packed PyTorch pickle (torch.save)" if head[:1] == b"P" else f"a Python pickle (protocol {head[1]})"
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return f"a {path.suffix} file (usually a PyTorch pickle)"
    return None


def _refuse_pickle(path: Path, kind: str) -> LorakilnError:
    """Pickles are refused, never opened: unpickling runs code the file chooses."""
    return LorakilnError(
        f"{path.name} is {kind}; lorakiln does not open pickled files, because loading one can "
        "run arbitrary code. Get the .safetensors version of this LoRA, or convert it with a tool "
        "you trust on a machine you do not mind risking."
    )


def resolve_input(path: str | Path) -> Path:
    """A file, or a diffusers LoRA folder holding ``pytorch_lora_weights.safetensors`` (diffusers' name)."""
    path = Path(path)
    if path.is_dir() and (path / DIFFUSERS_WEIGHT_NAME).is_file():
        return path / DIFFUSERS_WEIGHT_NAME
    return path


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse a safetensors header without loading tensors; `LorakilnError` for anything else.

    Pickles are named as such; any other damage gets `safetensors_check`'s message (the one
    check every reader shares).
    """
    path = resolve_input(path)
    if not path.is_file():
        raise LorakilnError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        layout = read_layout(path)
    except FileFormatError:  # pickle magic is checked only now: a 640-byte header starts like one
        with open(path, "rb") as fh:
            head = fh.read(8)
        if kind := _pickle_kind(path, head):
            raise _refuse_pickle(path, kind) from None
        raise
    return layout


def read_scalar(header: SafetensorsHeader, name: str, fh: Any | None = None) -> float:
    """The first element of a float tensor (an ``alpha``), read straight from the file."""
    entry = header.tensors[name]
    if fh is None:
        with open(header.path, "rb") as own:
            return read_scalar(header, name, own)
    fh.seek(header.data_start + entry.start)
    if entry.dtype == "BF16":  # bfloat16 = the top half of a float32
        return float(struct.unpack("<f", b"\x00\x00" + fh.read(2))[0])
    fmt = {"F64": "<d", "F32": "<f", "F16": "<e", "I64": "<q", "I32": "<i"}.get(entry.dtype)
    if fmt is None:
        raise LorakilnError(
            f"{header.path.name}: {name} has dtype {entry.dtype}, not a number lorakiln reads"
        )
    return float(struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0])
