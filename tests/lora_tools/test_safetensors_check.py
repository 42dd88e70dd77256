"""`lorakiln.safetensors_check`: every rule of the safetensors format spec it enforces, each with
a message naming the file, and no sound file refused (the library's own files, a 640-byte header
whose length bytes look like pickle magic)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorakiln.errors import FileFormatError
from lorakiln.lora_tools.files.header import read_header
from lorakiln.safetensors_check import load_checked, read_layout, refuse_non_finite


def _raw(path: Path, header: object, data: bytes = b"", *, pad: bool = True) -> Path:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_files_the_library_writes_pass_and_load(tmp_path: Path) -> None:
    tensors = {"a": torch.ones(2, 3, dtype=torch.bfloat16), "b": torch.tensor(1.5), "c": torch.zeros(0, 4),
               "d": torch.arange(5, dtype=torch.int64), "e": torch.zeros(3, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "ok.safetensors"), {"k": "v"})
    layout = read_layout(tmp_path / "ok.safetensors")
    assert layout.metadata == {"k": "v"} and layout.tensors["a"].shape == (2, 3) and layout.tensors["b"].shape == ()
    loaded, metadata = load_checked(tmp_path / "ok.safetensors")
    assert metadata == {"k": "v"} and all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_a_640_byte_header_is_not_mistaken_for_a_pickle(tmp_path: Path) -> None:
    """Length 640 is the bytes 0x80 0x02 — a pickle's PROTO 2 opcode — followed by zeros."""
    header = {"lora_te_x.alpha": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, "__metadata__": {}}
    header["__metadata__"]["pad"] = "x" * (640 - len(json.dumps(header).encode()) - len(', "pad": ""'))
    path = _raw(tmp_path / "640.safetensors", header, struct.pack("<f", 1.0))
    assert path.read_bytes()[:8] == b"\x80\x02" + b"\x00" * 6
    assert read_layout(path).tensors["lora_te_x.alpha"].end == 4
    assert read_header(path).tensors["lora_te_x.alpha"].shape == ()


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("header", "data", "message"), [
    ([1, 2], b"", "its header is a JSON list, not the object of tensors"),
    ({"__metadata__": {"a": 1}}, b"", "its __metadata__ is not a map of text to text"),
    ({"t": {"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "tensor 't' has dtype 'F17'"),
    ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "has shape [-2], not a list of whole"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "not [BEGIN, END] with 0 <= BEGIN"),
    ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(12), "needs 12 bytes but its data_offsets"),
    ({"t": F32_2, "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12),
     "tensor 'u' starts at byte 4 of the data, where the tensors before it end at 8: it overlaps"),
    ({"t": F32_2, "u": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20), "leaves a gap"),
    ({"t": F32_2}, bytes(12), "the file has 4 bytes after its last tensor's data"),
    ({"t": F32_2}, bytes(4), "tensor 't' ends at byte 8 of the data but the file holds only 4 bytes"),
])
def test_each_broken_rule_is_named(header: object, data: bytes, message: str, tmp_path: Path) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FileFormatError, match=r"bad\.safetensors: .*" + _escape(message)):
        read_layout(path)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_short_and_non_utf8_headers(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(FileFormatError, match="has 3 bytes, fewer than the 8-byte header length"):
        read_layout(tmp_path / "short.safetensors")
    path = _raw(tmp_path / "latin.safetensors", b'{"\xe9": 1}', pad=False)
    with pytest.raises(FileFormatError, match="header is not UTF-8 text"):
        read_layout(path)
    (tmp_path / "zero.safetensors").write_bytes(bytes(8))
    with pytest.raises(FileFormatError, match="says 0 bytes, too few"):
        read_layout(tmp_path / "zero.safetensors")


def test_pickles_are_named_and_never_opened(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(FileFormatError, match="it is a Python pickle .* never opens pickles"):
        read_layout(tmp_path / "p.safetensors")


def test_non_finite_values_name_file_and_module() -> None:
    tensors = {"lora_unet_a.lora_up.weight": torch.tensor([[1.0, float("nan")], [float("inf"), float("-inf")]]),
               "lora_unet_a.alpha": torch.tensor(1.0), "ids": torch.tensor([1, 2])}
    with pytest.raises(FileFormatError, match=r"x\.safetensors: module lora_unet_a holds 1 NaN and 2 infinite"):
        refuse_non_finite("x.safetensors", tensors)
    refuse_non_finite("x.safetensors", {"ok": torch.ones(2, dtype=torch.float16), "ids": torch.tensor([1])})
