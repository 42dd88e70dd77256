"""Which device and precision a run will use, said before it starts, without importing torch.

The trainer picks its device with `context.pick_device` (CUDA when `torch.cuda.is_available()`,
else the CPU) and its autocast dtype with `context.autocast_dtype_for`; the frozen weights are
half precision only on CUDA for a LoRA run (`model_setup.weight_dtype_for`). `lorakiln train
--dry-run` must say the same thing, yet must not import torch (seconds; a test keeps it so), so
when torch is not loaded yet the answer is read from what torch itself would read:

* torch's own `torch/version.py` (a text file): a build with ``cuda = None`` and ``hip = None``
  is CPU-only, so the run is on the CPU whatever GPU the machine has;
* otherwise the NVIDIA driver, through its C API (``libcuda``: ``cuInit``, ``cuDeviceGetCount``,
  ``cuDeviceGetName``, compute capability, ``cuDriverGetVersion``), the library under
  `torch.cuda.is_available()`. It honours ``CUDA_VISIBLE_DEVICES`` as torch does, and a driver
  older than the CUDA major version torch was built for means torch sees no GPU (CUDA's minor
  version compatibility covers the rest);
* ROCm builds ask for ``/dev/kfd`` (the AMD kernel driver) only.

When torch is already imported (the trainer), torch answers directly.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeviceChoice", "choose_device", "device_line"]

#: ``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`` / ``_MINOR`` (CUDA driver API, ``cuda.h``).
_CC_MAJOR, _CC_MINOR = 75, 76
#: Native bf16 tensor cores start at compute capability 8.0 (Ampere); `torch.cuda.is_bf16_supported`
#: says True below it too, because it counts emulation.
_NATIVE_BF16_CC = (8, 0)


@dataclass(frozen=True)
class DeviceChoice:
    """`device` as `pick_device` will choose it; the GPU's `name` and compute `capability` when
    known; `why` a CPU run (or "" on a GPU)."""

    device: str
    name: str | None = None
    capability: tuple[int, int] | None = None
    why: str = ""


def choose_device(use_torch: bool | None = None) -> DeviceChoice:
    """The device the trainer will pick (see the module docstring); never raises. `use_torch`:
    ask torch itself (default: only when it is already imported)."""
    if "torch" in sys.modules if use_torch is None else use_torch:
        return _from_torch()
    build = _torch_build()
    if build is None:
        return DeviceChoice("cpu", why="PyTorch is not installed")
    version, cuda, hip = build
    if cuda is None and hip is None:
        return DeviceChoice("cpu", why=f"this PyTorch {version} is a CPU-only build")
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return DeviceChoice("cpu", why="CUDA_VISIBLE_DEVICES hides every GPU")
    if hip is not None:
        if Path("/dev/kfd").exists():
            return DeviceChoice("cuda", name=f"AMD GPU, ROCm {hip}")
        return DeviceChoice("cpu", why=f"this PyTorch is a ROCm {hip} build and no AMD GPU driver (/dev/kfd) is loaded")
    return _from_driver(cuda)


def _from_torch() -> DeviceChoice:
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda or torch.version.hip
        why = "torch sees no CUDA GPU" if build else f"this PyTorch {torch.__version__} is a CPU-only build"
        return DeviceChoice("cpu", why=why)
    return DeviceChoice("cuda", name=torch.cuda.get_device_name(0), capability=torch.cuda.get_device_capability(0))


def _torch_build() -> tuple[str, str | None, str | None] | None:
    """(version, CUDA version, HIP version) from torch's `version.py`, read as text; None without torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        tree = ast.parse((Path(spec.origin).parent / "version.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    values: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            values[target.id] = value.value
    text = {k: v if isinstance(v, str) else None for k, v in values.items()}
    return text.get("__version__") or "?", text.get("cuda"), text.get("hip")


def _from_driver(cuda: str) -> DeviceChoice:
    """Ask the NVIDIA driver what torch's CUDA runtime would find."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so", "libcuda.dylib"]
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return DeviceChoice("cpu", why="no NVIDIA driver is installed (libcuda not found)")
    count, version, device = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return DeviceChoice("cpu", why="the NVIDIA driver reports no usable GPU")
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
        driver_major, needed = version.value // 1000, int(cuda.split(".")[0])
        if driver_major < needed:
            return DeviceChoice("cpu", why=f"the NVIDIA driver supports CUDA {driver_major}.{version.value % 1000 // 10}, "
                                           f"older than the CUDA {cuda} this PyTorch needs; update the driver")
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(device), 0)
    gpu = name.value.decode(errors="replace") if lib.cuDeviceGetName(name, 256, device) == 0 else None
    ok = (lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) == 0
          and lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device) == 0)
    return DeviceChoice("cuda", name=gpu or "NVIDIA GPU", capability=(major.value, minor.value) if ok else None)


def _cpu_has_bf16() -> bool | None:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX, from Linux's /proc/cpuinfo);
    None where that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_line(choice: DeviceChoice, mixed_precision: str, mode: str = "lora") -> str:
    """One line: the device, and what `train.mixed_precision` will really do on it (on a CPU the
    weights stay fp32 and only autocast changes; fp16 adds loss scaling)."""
    if choice.device == "cuda":
        where = f"device: cuda ({choice.name})" if choice.name else "device: cuda"
        if mixed_precision == "no":
            faster = choice.capability is not None and choice.capability >= _NATIVE_BF16_CC
            return f"{where}, precision fp32 (mixed_precision = 'no'" + (
                "; 'bf16' trains faster on this GPU)" if faster else ")")
        weights = (f"U-Net and text encoders in {mixed_precision}, LoRA weights and VAE in fp32" if mode == "lora"
                   else "fp32 weights under autocast (full fine-tuning)")
        text = f"{where}, mixed precision {mixed_precision} ({weights}" + (
            ", with loss scaling)" if mixed_precision == "fp16" else ")")
        if mixed_precision == "bf16" and choice.capability is not None and choice.capability < _NATIVE_BF16_CC:
            cc = ".".join(map(str, choice.capability))
            text += (f"; this GPU (compute capability {cc}) has no native bf16, so it is emulated and slow: "
                     "use mixed_precision = 'fp16'")
        return text
    where = f"device: cpu ({choice.why})" if choice.why else "device: cpu"
    if mixed_precision == "no":
        return f"{where}, precision fp32 (mixed_precision = 'no')"
    head = (f"{where}, mixed_precision = '{mixed_precision}': on the CPU the weights stay fp32 and only the "
            f"forward pass runs under {mixed_precision} autocast")
    if mixed_precision == "fp16":
        return head + " with loss scaling; CPUs have little fp16 arithmetic, so this is much slower than 'no'"
    native = _cpu_has_bf16()
    if native:
        return head + "; this CPU computes bf16 natively (AVX512-BF16/AMX), so it runs about as fast as 'no'"
    return head + ("; without native bf16 (AVX512-BF16/AMX) on this CPU it is slower than 'no'" if native is False
                   else "; unless the CPU computes bf16 natively (AVX512-BF16/AMX) it is slower than 'no'")
