"""Write the corpus of broken inputs, `tests/fixtures/broken/`, byte for byte the same every run.

    .venv/bin/python scripts/make_broken_fixtures.py [FOLDER]

`tests/test_broken_inputs.py` runs every CLI verb that reads a LoRA on every file here and
expects exit code 2 with one message naming the file, never a traceback. The files are small
kohya LoRAs whose key names and shapes come from the tiny test models (`tiny:sd1`,
`tiny:sdxl`), so each one is broken in exactly one way:

* ``intact/sd1.safetensors`` — the sound LoRA the others are made from (and the second input
  of two-input verbs); every verb must accept it;
* structure (the safetensors format spec: 8-byte little-endian header length, a JSON object,
  data offsets that tile the byte buffer): ``empty``, ``truncated-header``, ``truncated-data``,
  ``oversized-header``, ``header-not-json``, ``bad-offsets``, ``pickle`` (a Python pickle
  under the .safetensors suffix);
* values: ``nan`` (one NaN in a U-Net ``lora_up``), ``inf`` (one +inf in a text-encoder
  ``lora_down``), ``nan-embedding`` (a textual-inversion embedding, kohya ``emb_params``, with
  a NaN vector);
* layout: ``wrong-rank`` (``lora_up`` of rank 3 against a ``lora_down`` of rank 2);
* model: ``wrong-family-sdxl`` — an SDXL LoRA without metadata or text-encoder keys whose
  U-Net key names also exist in SD 1.x (LDM naming, which kohya sd-scripts and A1111 accept),
  but whose cross-attention factors are 96 wide where SD 1.x's are 32. Only verbs with a base
  model can tell; the test runs it with ``tiny:sd1``.

The files are serialised here rather than by the safetensors library, so the bytes depend on
nothing but this script (sorted keys, fixed values, the spec's space padding of the header).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT / "tests" / "fixtures" / "broken"

#: (module, in, out) of the intact SD 1.x LoRA: a text-encoder projection, U-Net self- and
#: cross-attention (the tiny SD1's widths: 32 everywhere, text 32).
SD1_MODULES = (
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 32, 32),
)
#: The tiny SDXL's input_blocks_4_1 (LDM naming, SD 1.x's down_blocks_1_attentions_0): the same
#: self-attention width as SD 1.x, but cross-attention reads both text encoders (32 + 64 = 96).
SDXL_MODULES = (
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 32, 32),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 96, 32),
)
RANK = 2
SD1_METADATA = {"ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora", "ss_network_dim": "2",
                "ss_network_alpha": "1.0", "ss_output_name": "sd1"}
_DTYPES = {torch.float32: "F32", torch.float16: "F16"}


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A .safetensors file: header length, JSON header (space-padded to 8 bytes), tensor bytes."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        data = tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _values(rows: int, cols: int, phase: float) -> torch.Tensor:
    """Small fixed values (a sampled sine, rounded): no random generator, so no library version
    can change the bytes."""
    return (torch.sin(torch.arange(rows * cols, dtype=torch.float64) * 0.7 + phase) * 0.1).round(decimals=4) \
        .float().reshape(rows, cols)


def lora_tensors(modules: tuple[tuple[str, int, int], ...], phase: float) -> dict[str, torch.Tensor]:
    """kohya tensors (``lora_down`` [rank, in], ``lora_up`` [out, rank], 0-dim ``alpha``), fixed values."""
    out: dict[str, torch.Tensor] = {}
    for index, (key, width_in, width_out) in enumerate(modules):
        out[f"{key}.lora_down.weight"] = _values(RANK, width_in, phase + index)
        out[f"{key}.lora_up.weight"] = _values(width_out, RANK, phase + index + 0.5)
        out[f"{key}.alpha"] = torch.tensor(1.0)
    return out


def _intact() -> bytes:
    return encode(lora_tensors(SD1_MODULES, phase=0.0), SD1_METADATA)


def _with(change: Callable[[dict[str, torch.Tensor]], None], metadata: dict[str, str] | None = None) -> bytes:
    tensors = lora_tensors(SD1_MODULES, phase=0.0)
    change(tensors)
    return encode(tensors, SD1_METADATA if metadata is None else metadata)


def _set(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key][0, 0] = value
    return change


def _wrong_rank(tensors: dict[str, torch.Tensor]) -> None:
    key = f"{SD1_MODULES[1][0]}.lora_up.weight"
    tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], dim=1)  # [32, 3] against down [2, 32]


def _bad_offsets() -> bytes:
    """The intact file with its last tensor's data_offsets moved past the end of the file."""
    data = _intact()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    header[last]["data_offsets"] = [o + 4096 for o in header[last]["data_offsets"]]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def corpus() -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file of the corpus."""
    intact = _intact()
    (n,) = struct.unpack("<Q", intact[:8])
    sd1_q = SD1_MODULES[1][0]
    te_q = SD1_MODULES[0][0]
    return {
        "intact/sd1.safetensors": intact,
        "empty.safetensors": b"",
        "truncated-header.safetensors": intact[: 8 + n // 2],
        "truncated-data.safetensors": intact[: len(intact) - 100],
        "oversized-header.safetensors": struct.pack("<Q", 2**40) + b'{"__metadata__":{}}' + b" " * 5,
        "header-not-json.safetensors": struct.pack("<Q", 32) + b"this header is not JSON at all!!",
        "bad-offsets.safetensors": _bad_offsets(),
        "pickle.safetensors": b"\x80\x02}q\x00.",  # pickle protocol 2 of {}: harmless, and refused unopened
        "nan.safetensors": _with(_set(f"{sd1_q}.lora_up.weight", float("nan"))),
        "inf.safetensors": _with(_set(f"{te_q}.lora_down.weight", float("inf"))),
        "nan-embedding.safetensors": encode({"emb_params": torch.full((1, 32), float("nan"))}),
        "wrong-rank.safetensors": _with(_wrong_rank),
        "wrong-family-sdxl.safetensors": encode(lora_tensors(SDXL_MODULES, phase=10.0)),
    }


def write(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Write the corpus under `folder` (created if missing); returns the paths written."""
    written = []
    for name, data in corpus().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER):
        print(f"{path.stat().st_size:6d}  {path}")
