"""One check of a `.safetensors` file's structure, before any reader trusts it.

A truncated download, a file cut by a full disk or a file that only has the suffix used to reach
the user as the safetensors library's own text (``incomplete metadata``, ``HeaderTooLarge``) or
as a `struct.error`; here every reader (`lora info`, the LoRA tools, generation, embeddings) gets
one `FileFormatError` that names the file, says what is wrong and what to do.

The rules are the safetensors format spec's (huggingface/safetensors, README "Format"):

* 8 bytes: ``N``, an unsigned little-endian 64-bit integer, the size of the header;
* ``N`` bytes: a UTF-8 JSON object ``{name: {"dtype", "shape", "data_offsets": [BEGIN, END]}}``
  with an optional ``"__metadata__"`` map of strings to strings;
* the rest: the byte buffer. Offsets are relative to its start, a tensor's span is exactly
  ``prod(shape) × dtype size`` bytes, and "the byte buffer needs to be entirely indexed, and
  cannot contain holes" — so the spans tile the buffer and it ends where the last one does.

The library also refuses headers over 100 MB (``MAX_HEADER_SIZE``); so does this check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakiln.errors import FileFormatError

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each dtype the spec names (sub-byte float formats are left out: no
#: LoRA, embedding or checkpoint lorakiln reads stores them).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_REDO = "the file is damaged or is not a .safetensors file; download or copy it again"


@dataclass(frozen=True)
class TensorSpan:
    """One tensor as the header describes it; ``start``/``end`` are relative to the data start."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """A checked header: every span lies inside the file and the spans tile the data exactly."""

    path: Path
    tensors: dict[str, TensorSpan]
    metadata: dict[str, str]
    #: Byte offset of the tensor data in the file (8-byte length + header).
    data_start: int
    file_size: int


def _fail(path: Path, problem: str, advice: str = _REDO) -> FileFormatError:
    return FileFormatError(f"{path}: {problem}; {advice}")


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """The checked header of `path`, or `FileFormatError` naming the file and the broken rule."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
        if (n < 2 or 8 + n > size) and looks_like_pickle(head):
            raise _fail(path, "it is a Python pickle (a PyTorch .pt/.ckpt file under another name), not a "
                        ".safetensors file", "lorakiln never opens pickles, because loading one can run "
                        "arbitrary code: get the .safetensors version of the file")
        if len(head) < 8:
            raise _fail(path, f"the file has {size} bytes, fewer than the 8-byte header length every "
                        ".safetensors file starts with")
        if n > MAX_HEADER_BYTES:
            raise _fail(path, f"its header length field says {n} bytes, more than the {MAX_HEADER_BYTES} a "
                        ".safetensors header may have")
        if n < 2:  # the smallest header is "{}"
            raise _fail(path, f"its header length field says {n} bytes, too few for the smallest header")
        if 8 + n > size:
            raise _fail(path, f"its header length field says {n} bytes but the file holds only {size - 8} after "
                        "it (a truncated file)")
        raw = fh.read(n)
    header = _parse_json(path, raw)
    metadata = _metadata(path, header.pop("__metadata__", None))
    tensors = {name: _span(path, name, entry) for name, entry in header.items()}
    _check_tiling(path, tensors, size - 8 - n)
    return Layout(path, tensors, metadata, 8 + n, size)


def looks_like_pickle(head: bytes) -> bool:
    """Pickle magic: a zip (``torch.save``) or the PROTO opcode 0x80 with protocol 2–5.

    Only meaningful once the bytes failed as a safetensors header length: a valid header of
    640 bytes starts with 0x80 0x02 too.
    """
    return head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _parse_json(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise _fail(path, f"its {len(raw)}-byte header is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"its {len(raw)}-byte header is not JSON ({err.msg} at byte {err.pos})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"its header is a JSON {type(header).__name__}, not the object of tensors the format "
                    "requires")
    return header


def _metadata(path: Path, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _fail(path, "its __metadata__ is not a map of text to text, as the format requires")
    return {str(k): v for k, v in raw.items()}


def _span(path: Path, name: str, entry: Any) -> TensorSpan:
    """One header entry, checked on its own: known dtype, whole-number shape, span = shape × dtype."""
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r} is described by {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _fail(path, f"tensor {name!r} has dtype {dtype!r}, which is not a safetensors dtype lorakiln reads "
                    f"({', '.join(DTYPE_BYTES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r} has shape {shape!r}, not a list of whole numbers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor {name!r} has data_offsets {offsets!r}, not [BEGIN, END] with 0 <= BEGIN <= END")
    need = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != need:
        raise _fail(path, f"tensor {name!r} ({dtype} {shape}) needs {need} bytes but its data_offsets {offsets} "
                    f"span {offsets[1] - offsets[0]}")
    return TensorSpan(dtype, tuple(shape), offsets[0], offsets[1])


def _check_tiling(path: Path, tensors: Mapping[str, TensorSpan], available: int) -> None:
    """The spans must cover the data buffer without holes or overlaps and end where the file does."""
    expected = 0
    for name, span in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if span.end > available:
            raise _fail(path, f"tensor {name!r} ends at byte {span.end} of the data but the file holds only "
                        f"{available} bytes of data (a truncated file, or a header pointing past its data)")
        if span.start != expected:
            what = "overlaps the tensor before it" if span.start < expected else "leaves a gap before it"
            raise _fail(path, f"tensor {name!r} starts at byte {span.start} of the data, where the tensors "
                        f"before it end at {expected}: it {what}")
        expected = span.end
    if expected != available:
        raise _fail(path, f"the file has {available - expected} bytes after its last tensor's data, which the "
                    "format does not allow")


def load_checked(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of `path`, after `read_layout` has accepted its structure."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    layout = read_layout(path)
    try:
        tensors = load_file(str(layout.path))
    except SafetensorError as err:  # a rule of the library's that the checks above do not repeat
        raise _fail(layout.path, f"the safetensors library cannot read it ({err})") from None
    return tensors, layout.metadata


def module_of(key: str) -> str:
    """The module a tensor key belongs to: kohya ``<module>.lora_up.weight`` (kohya sd-scripts
    splits at the first "."), diffusers/PEFT ``<module>.lora_A.weight``."""
    if ".lora_" in key:
        return key.split(".lora_")[0]
    return key.partition(".")[0]


def refuse_non_finite(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *,
                      what: str = "LoRA") -> None:
    """Raise `FileFormatError` for the first tensor holding NaN or ±inf, naming file and module.

    Such a file turns every image it touches black (NaN spreads through the whole U-Net) and makes
    an SVD fail, so it is refused where it is read rather than discovered in the output.
    """
    import torch

    for key in sorted(tensors):
        tensor = tensors[key]
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int((~finite).sum()) - nan
        counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
        raise FileFormatError(
            f"{path}: module {module_of(key)} holds {counts} value(s) (tensor {key}); a {what} with NaN or "
            "infinite weights turns images black, so lorakiln refuses it. The file is damaged, or its training "
            "diverged before it was saved: use an earlier epoch's file, or retrain with a lower learning rate")


def scan_non_finite(path: str | os.PathLike[str], *, what: str = "LoRA") -> None:
    """`refuse_non_finite` over a whole file, one tensor at a time (a large file never sits in
    memory at once); run `read_layout` first."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        names = fh.keys()  # the handle is not iterable itself
        for key in names:
            refuse_non_finite(path, {key: fh.get_tensor(key)}, what=what)


def tensor_data_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the bytes after the header: kohya's ``sshs_model_hash`` and the hash A1111 keys a
    LoRA by (`use_addnet_hash`), so renaming a file or editing its metadata does not change it.
    A1111's "Lora hashes" infotext writes its first 12 hex digits."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
