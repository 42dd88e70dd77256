"""Writing LoRA files: the kohya format (primary) and the diffusers/PEFT format (secondary).

The kohya layout (``lora_unet_*``/``lora_te*_*`` + ``.lora_down.weight``,
``.lora_up.weight``, 0-dim ``.alpha``, ``ss_*``/``modelspec.*`` metadata) is the only one every
client loads (AUTOMATIC1111, Forge, SD.Next, ComfyUI, kohya sd-scripts and diffusers); the diffusers layout (``unet.…lora_A.weight``) is offered for diffusers users.

Both writes are atomic (temp file in the same folder, then rename; `lorakiln.atomic`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save

from lorakiln.atomic import atomic_path
from lorakiln.errors import LorakilnError
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.file_checks import read_lora_checked
from lorakiln.networks.network import LoRANetwork
from lorakiln.safetensors_check import load_checked

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "float": torch.float32, "fp32": torch.float32, "float32": torch.float32,
}  # fmt: skip


def resolve_save_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``--save_precision`` values (fp16/bf16/float) or a torch dtype; None keeps fp32 params."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown save precision {dtype!r}; valid: fp16, bf16, float") from None


def kohya_state_dict(network: LoRANetwork, dtype: torch.dtype | str | None = None) -> dict[str, torch.Tensor]:
    """The kohya tensor dict: ``network.state_dict()`` on CPU, every tensor (alpha too) cast to
    ``dtype`` like kohya's ``save_weights`` (sd-scripts ``networks/lora.py``)."""
    target = resolve_save_dtype(dtype)
    out = {}
    for key, tensor in network.state_dict().items():
        tensor = tensor.detach().to("cpu")
        out[key] = (tensor if target is None else tensor.to(target)).contiguous()
    return out


# -- hashes (sd-scripts `train_util.precalculate_safetensors_hashes`) -----------------------------------------------------


def _data_offset(buf: bytes) -> int:
    (header_len,) = struct.unpack("<Q", buf[:8])
    return 8 + header_len


def addnet_model_hash(buf: bytes) -> str:
    """``sshs_model_hash``: sha256 of the tensor bytes after the 8-byte length and the header.

    Metadata-independent, so it can be recomputed from the final file.
    """
    return hashlib.sha256(memoryview(buf)[_data_offset(buf) :]).hexdigest()


def addnet_legacy_hash(buf: bytes) -> str:
    """``sshs_legacy_hash``: first 8 hex of sha256 of bytes 0x100000–0x110000 of ``buf``."""
    return hashlib.sha256(memoryview(buf)[0x100000:0x110000]).hexdigest()[:8]


def precalculate_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """Both addnet hashes, computed like kohya on a buffer serialised with only ``ss_*`` metadata.

    Only the training metadata is used so that adding user metadata later does not change the
    legacy hash (which covers header bytes once files are small).
    """
    buf = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return {"sshs_model_hash": addnet_model_hash(buf), "sshs_legacy_hash": addnet_legacy_hash(buf)}


# -- writers -----------------------------------------------------------------------------------


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    data = save(tensors, metadata)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def save_kohya_lora(
    network: LoRANetwork,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write the network as a kohya-format ``.safetensors`` LoRA, atomically.

    ``metadata`` (from `build_metadata`) gets ``sshs_model_hash``/``sshs_legacy_hash`` added.
    Returns the path written.
    """
    path = Path(path)
    tensors = kohya_state_dict(network, dtype)
    md = dict(metadata or {})
    bad = [k for k, v in md.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not str: {', '.join(bad)}")
    md |= precalculate_hashes(tensors, md)
    _write_safetensors(path, tensors, md)
    return path


def diffusers_state_dict(
    network: LoRANetwork, dtype: torch.dtype | str | None = None
) -> dict[str, torch.Tensor]:
    """PEFT-named tensors (``unet.<path>.lora_A.weight`` / ``lora_B``) with the scale folded in.

    diffusers reads a file without alphas as alpha = rank, i.e. scale 1 (diffusers
    ``utils/peft_utils.py`` ``get_peft_kwargs``); so do ComfyUI and A1111 for ``lora_A/lora_B`` keys. Folding
    ``alpha/r`` into ``lora_B`` makes every client apply exactly ``(alpha/r)·up@down`` without
    relying on ``lora_adapter_metadata``, which only diffusers reads.

    LoCon conv modules export the same way: ``lora_A`` is the k×k ``down`` conv ``[r, in, kh,
    kw]`` and ``lora_B`` the 1×1 ``up`` conv, which is exactly PEFT's ``Conv2d`` LoRA layout.
    LoHa/LoKr raise `LorakilnError`: diffusers cannot load them (its kohya converter raises). So does
    DoRA: diffusers' ``lora_state_dict`` drops kohya ``dora_scale`` with only a warning and PEFT's DoRA
    (``lora_magnitude_vector``) normalises per output row, not per input column as lorakiln's
    DoRA does (`lorakiln.networks.dora`), so no diffusers file computes the trained weights.
    """
    if network.algo in ("loha", "lokr"):
        # diffusers' kohya converter raises on any key that is not lora_down/lora_up/alpha and
        # PEFT has no LoHa/LoKr loader for SD pipelines (diffusers ``lora_pipeline.py`` ``lora_state_dict``).
        raise LorakilnError(
            f"diffusers cannot load {network.algo} (LoHa/LoKr) weights; use the kohya .safetensors "
            "file in AUTOMATIC1111/ComfyUI"
        )
    if network.dora:
        raise LorakilnError(
            "diffusers cannot load DoRA (network.dora_wd) weights: it drops dora_scale and would apply a "
            "plain LoRA; use the kohya .safetensors file in AUTOMATIC1111/ComfyUI, or train with "
            "dora_wd = false for a diffusers file"
        )
    target = resolve_save_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for key, module in network.loras():
        name = keymap.peft_module_name(key, network.family)
        down = module.lora_down.weight.detach().to("cpu", torch.float32)
        up = module.lora_up.weight.detach().to("cpu", torch.float32) * module.scale
        for suffix, tensor in (("lora_A.weight", down), ("lora_B.weight", up)):
            out[f"{name}.{suffix}"] = (tensor if target is None else tensor.to(target)).contiguous()
    return out


def save_diffusers_lora(
    network: LoRANetwork, folder_or_path: str | Path, dtype: torch.dtype | str | None = None
) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights``, atomically.

    A path ending in ``.safetensors`` is used as the file name; anything else is a folder.
    """
    path = Path(folder_or_path)
    if path.suffix != ".safetensors":
        path = path / DIFFUSERS_WEIGHT_NAME
    _write_safetensors(path, diffusers_state_dict(network, dtype), {"format": "pt"})
    return path


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a ``.safetensors`` LoRA's tensors and metadata (for inspection; values are not
    checked, so a NaN file can be examined). A damaged file is the shared `FileFormatError`."""
    return load_checked(path)


def load_network_weights(network: LoRANetwork, path: str | Path) -> str:
    """Start `network` from the LoRA file `path` (the trainer's ``network.network_weights``) and
    return a one-line report of what was loaded.

    The file passes `read_lora_checked` first: NaN or infinite weights would make every step's
    loss NaN, and factors that disagree on the rank would fail later as a shape error. A file
    with fewer modules than the network (an attention-only file into the ``kohya`` preset) loads
    into the modules it has and the report names the ones that start fresh, as kohya's
    non-strict load does silently; a module of the file the network lacks, or a shape mismatch,
    is an error with the file's path, since a key list alone does not say which of the config's
    files to change.
    """
    tensors, _ = read_lora_checked(path)
    own = {key for key, _ in network.loras()}
    given = {name.partition(".")[0] for name in tensors}
    fresh = sorted(own - given)
    only = own & given if given <= own else None  # a file with modules the network lacks: the strict error
    try:
        network.load_kohya_state_dict(tensors, only=only)
    except LorakilnError as err:
        raise LorakilnError(f"network.network_weights {path} does not fit the network this config builds: "
                            f"{err}\nTo build the network from the file instead, set network.dim_from_weights "
                            "= true (kohya's --dim_from_weights).") from None
    name = Path(path).name
    if not fresh:
        return f"network.network_weights: loaded all {len(own)} modules from {name}"
    return (f"network.network_weights: loaded {len(own) - len(fresh)} of {len(own)} modules from {name}; "
            f"{len(fresh)} are not in the file and start fresh (e.g. {fresh[0]}); "
            "network.dim_from_weights = true would train only the file's")
