"""Checks a LoRA file must pass before its tensors touch a model, shared by generation
(`networks.apply`) and the LoRA tools (`lora_tools.files`: `lorafile`, `convert`, `info`).

Without them a damaged file surfaced far from its cause: NaN weights as a black image with exit
code 0, a rank mismatch or a LoRA for another model as torch's ``mat1 and mat2 shapes cannot be
multiplied`` in the middle of sampling. Each check names the file, the module and the fix.

* structure: `lorakiln.safetensors_check` (the safetensors format spec);
* values: no NaN/inf (`safetensors_check.refuse_non_finite`);
* rank layout: a LoRA module's two factors share their rank — kohya sd-scripts writes
  ``lora_down`` as ``[rank, in(, kh, kw)]`` and ``lora_up`` as ``[out, rank(, 1, 1)]``, diffusers/PEFT
  ``lora_A``/``lora_B`` the same way — and ``alpha`` is one number;
* fit: a module's in/out sizes are those of the layer it patches (`check_fits`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lorakiln.errors import FileFormatError, LorakilnError
from lorakiln.safetensors_check import load_checked, refuse_non_finite

if TYPE_CHECKING:
    import torch
    from torch import nn

#: (down suffix, up suffix) of every LoRA naming: kohya, PEFT, and diffusers' older attention
#: processor and ``lora_linear_layer`` forms.
FACTOR_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    ("lora.down.weight", "lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)


def check_rank_layout(path: str | os.PathLike[str], shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse a module whose down/up factors disagree on the rank, or a non-scalar ``alpha``.

    Works on shapes alone, so `lora info` runs it from the header without loading tensors.
    """
    for key, shape in shapes.items():
        if key.endswith(".alpha") and len(shape) and math.prod(shape) != 1:
            raise FileFormatError(f"{path}: {key} has shape {list(shape)}; an alpha is one number (kohya "
                                  "sd-scripts stores a 0-dim tensor) — the file is damaged")
        for down_suffix, up_suffix in FACTOR_SUFFIXES:
            if not key.endswith(down_suffix):
                continue
            prefix = key[: -len(down_suffix)]
            up = shapes.get(prefix + up_suffix)
            if up is None:
                break
            module = prefix.rstrip("._")  # "…to_q_lora.down.weight" → module "…to_q"
            down_name, up_name = down_suffix.lstrip("."), up_suffix.lstrip(".")
            if len(shape) < 2 or len(up) < 2:
                raise FileFormatError(f"{path}: module {module}: {down_name} {list(shape)} and {up_name} {list(up)} "
                                      "are not matrices; the file is damaged")
            if up[1] != shape[0]:
                raise FileFormatError(
                    f"{path}: module {module} has rank {shape[0]} in {down_name} {list(shape)} but {up[1]} in "
                    f"{up_name} {list(up)}; a LoRA module's factors must share their rank (down is [rank, in], "
                    "up is [out, rank]). The file is damaged or was written by a broken tool: use another copy")
            break


def read_lora_checked(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LoRA file's tensors and metadata once its structure, values and rank layout are sound."""
    tensors, metadata = load_checked(path)
    check_rank_layout(path, {k: tuple(t.shape) for k, t in tensors.items()})
    refuse_non_finite(path, tensors)
    return tensors, metadata


def _flat(shape: Sequence[int]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def check_fits(path: str | os.PathLike[str], key: str, target: nn.Module, got: tuple[torch.Tensor, torch.Tensor],
               want: tuple[Sequence[int], Sequence[int]], family: str) -> None:
    """Refuse a LoRA module whose ``(down, up)`` factors `got` do not have the shapes `want` that
    a module of that rank has on `target` (compared as ``[rows, everything else]``, so A1111's 2-D
    factors of a 1×1 conv fit).

    A LoRA for another base model (an SDXL file whose key names also exist in SD 1.x, a model
    with other widths) otherwise fails in the first matmul of sampling, far from its cause.
    """
    down, up = got
    if _flat(down.shape) == _flat(want[0]) and _flat(up.shape) == _flat(want[1]):
        return
    width_in = getattr(target, "in_features", getattr(target, "in_channels", "?"))
    width_out = getattr(target, "out_features", getattr(target, "out_channels", "?"))
    kernel = getattr(target, "kernel_size", None)
    layer = f"{type(target).__name__} {width_in} → {width_out}" + (f", kernel {tuple(kernel)}" if kernel else "")
    raise LorakilnError(
        f"{path}: module {key} does not fit this {family} model: its lora_down is {list(down.shape)} and "
        f"lora_up {list(up.shape)}, but the layer it names is a {layer} (it needs {list(want[0])} and "
        f"{list(want[1])}). The LoRA was made for another base model (SD 1.x vs SDXL, or other layer widths): "
        "use it with the model it was trained on")
