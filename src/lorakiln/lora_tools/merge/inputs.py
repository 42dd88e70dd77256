"""`lora merge` inputs: ``--lora PATH[:TE[:UNET]]`` specs, reading and checking the files, and
each module's full ΔW — from the files alone, or from hooks on a loaded base model.

Everything that can be wrong with the inputs (a missing file, bad strength syntax, LoRAs for two
different families, a key that is not a module of the family, a LoHa/LoKr module whose weight
shape the file does not record) is raised here, before the base model is loaded or any SVD runs.

Two sources give the per-module deltas ``ΔWᵢ`` (at strength 1) that every merge method combines:

* `FileDeltas` rebuilds them from the files: LoRA/LoCon as ``(alpha/rank)·up@down``
  (kohya), LoHa/LoKr through the generator's own `FileDeltaAdapter` (LyCORIS keys; its scale
  rule is the readers', A1111's ``calc_scale``), on a stand-in layer of the target's shape. LoHa and LoKr store conv
  factors flattened (``[r, in·kh·kw]``), so a conv target's kernel is only known from Tucker
  cores, a 4-D ``lokr_w2``, another input's LoRA for the same module, or a base model.
* `ModelDeltas` hooks every file into a loaded base with `apply_lora_file` — the exact path
  generation takes — and asks each adapter for ``delta_weight()``. Used when ``--model`` is
  given: shapes and key resolution then come from the real modules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import KohyaLoRA, read_kohya_lora
from lorakiln.models.family import ModelFamily
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.apply import AppliedLoRA, apply_lora_file
from lorakiln.networks.file_adapters import FileDeltaAdapter
from lorakiln.networks.file_family import detect_family
from lorakiln.safetensors_check import read_layout

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle

_SUFFIX = ".safetensors"
#: DoRA's magnitude key (LyCORIS): such a module's change depends on the base weight.
DORA_KEY = "dora_scale"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_STRENGTHS = re.compile(rf"^(?::({_NUMBER})(?::({_NUMBER}))?)?$")


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora`` argument: a file and its strengths, A1111 ``<lora:name:te:unet>`` style."""

    path: Path
    te: float = 1.0
    unet: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``a.safetensors``, ``a.safetensors:0.8`` or ``a.safetensors:1:0.5`` (te, then U-Net).

        The path ends at the last ``.safetensors`` (LoRA tools read nothing else), so Windows
        drive letters and colons in folder names stay part of it.
        """
        end = text.lower().rfind(_SUFFIX)
        if end < 0:
            raise LorakilnError(f"--lora {text!r}: expected a .safetensors LoRA file, as PATH[:STRENGTH[:UNET]] "
                                "(e.g. style.safetensors:0.8)")
        path, rest = text[: end + len(_SUFFIX)], text[end + len(_SUFFIX):]
        m = _STRENGTHS.match(rest)
        if m is None:
            raise LorakilnError(f"--lora {text!r}: bad strength {rest!r}; write PATH[:STRENGTH[:UNET]] like A1111's "
                                "<lora:name:te:unet>, e.g. style.safetensors:0.8 or style.safetensors:1:0.5")
        te = float(m[1]) if m[1] is not None else 1.0
        unet = float(m[2]) if m[2] is not None else te  # A1111: the U-Net strength defaults to te's
        return cls(Path(path), te, unet)

    def strength(self, key: str) -> float:
        """The strength for module `key`: U-Net keys take ``unet``, text-encoder keys ``te`` (A1111's ``<lora:name:te:unet>``)."""
        return self.unet if key.startswith(keymap.UNET_PREFIX + "_") else self.te

    def label(self) -> str:
        return f"{self.path.name}:{self.te:g}" + ("" if self.unet == self.te else f":{self.unet:g}")


def _declared_family(path: Path) -> str | None:
    """The family a file says it is for, from its header only (no tensor data read)."""
    layout = read_layout(path)  # a damaged file is refused here, naming the broken rule
    return detect_family(layout.tensors, layout.metadata)[0]  # key names and metadata: the header is enough


def check_files(specs: Sequence[LoraSpec]) -> None:
    for spec in specs:
        if not spec.path.is_file():
            raise LorakilnError(f"{spec.path}: no such LoRA file")


def read_inputs(
    specs: Sequence[LoraSpec], family: str | None = None, base: tuple[str, ModelFamily] | None = None
) -> list[KohyaLoRA]:
    """Read every input as a `KohyaLoRA` of one family, or raise naming the file that differs.

    `family` is ``--family`` (for files that do not say); `base` is ``(name, family)`` of the
    base model when one is given, which every file must match.
    """
    check_files(specs)
    declared = [_declared_family(s.path) for s in specs]
    if base is not None:
        name, fam = base
        for spec, made_for in zip(specs, declared, strict=True):
            if made_for is not None and made_for != fam.name:
                raise LorakilnError(f"{spec.path.name} is a LoRA for {made_for}, but the base model {name} is "
                                    f"{fam.name}; merge {fam.name} LoRAs only, or pick a {made_for} base model")
        family = fam.name
    known = {d: s for s, d in zip(specs, declared, strict=True) if d is not None}
    if family is not None and set(known) - {family}:
        other = next(d for d in known if d != family)
        raise LorakilnError(f"{known[other].path.name} is a LoRA for {other}, not {family} (--family {family})")
    if len(known) > 1:
        listing = ", ".join(f"{s.path.name} is {d}" for d, s in sorted(known.items()))
        raise LorakilnError(f"cannot merge LoRAs made for different base models: {listing}")
    resolved = family or next(iter(known), None)
    loras = [read_kohya_lora(s.path, resolved) for s in specs]
    for lora in loras:
        for key in lora.modules:
            try:
                keymap.kohya_to_diffusers_module(key, lora.family)
            except KeyError:
                raise LorakilnError(f"{lora.path.name}: {key!r} is not a module key of {lora.family.name} "
                                    "(kohya keys start lora_unet_ or the family's lora_te prefixes)") from None
    return loras


def _file_shape(algo: str, parts: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], bool]:
    """``(shape, exact)``: the module's ΔW shape as far as its own tensors tell.

    ``exact`` is False when a conv kernel may be flattened into the last axis (LoHa without
    Tucker, LoKr with a decomposed non-Tucker ``w2``): then the shape is ``(out, in·kh·kw)``.
    A LoRA's own shape is always exact: a 2-D down on a conv is a 1×1 conv to every reader (A1111 ``network_lora.py`` reshapes it).
    """
    if algo == "lora":
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        return (up.shape[0], *down.shape[1:]), True
    if algo == "loha":
        a, b = parts["hada_w1_a"], parts["hada_w1_b"]
        if "hada_t1" in parts:  # Tucker: a [r, out], b [r, in], core [r, r, kh, kw]
            return (a.shape[1], b.shape[1], *parts["hada_t1"].shape[2:]), True
        return (a.shape[0], b.shape[1]), False
    w1 = parts.get("lokr_w1")
    a, c = w1.shape if w1 is not None else (parts["lokr_w1_a"].shape[0], parts["lokr_w1_b"].shape[1])
    if "lokr_w2" in parts:  # full: 4-D for a conv, 2-D only for a Linear (LyCORIS LokrModule)
        b, d, *kernel = parts["lokr_w2"].shape
        return (a * b, c * d, *kernel), True
    w2_a, w2_b = parts["lokr_w2_a"], parts["lokr_w2_b"]
    if "lokr_t2" in parts:  # Tucker: w2_a [r, b], w2_b [r, d]
        return (a * w2_a.shape[1], c * w2_b.shape[1], *parts["lokr_t2"].shape[2:]), True
    return (a * w2_a.shape[0], c * w2_b.shape[1]), False


def stackable(algo: str, parts: dict[str, torch.Tensor]) -> bool:
    """Whether the module is plain LoRA/LoCon factors, whose ranks can be stacked exactly."""
    return algo == "lora" and DORA_KEY not in parts


def full_rank(shape: tuple[int, ...]) -> int:
    """The most rank a delta of `shape` can have, ``min(out, in·kh·kw)``."""
    return min(_flat(shape))


def _flat(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def resolve_shape(key: str, found: Sequence[tuple[str, tuple[int, ...], bool]]) -> tuple[int, ...]:
    """One shape for `key` from ``(file name, shape, exact)`` of each input that has it."""
    flats = {_flat(shape) for _, shape, _ in found}
    if len(flats) > 1:
        listing = ", ".join(f"{name}: {tuple(shape)}" for name, shape, _ in found)
        raise LorakilnError(f"{key}: the inputs disagree on this module's weight shape ({listing}); they were "
                            "made for different models")
    exact = sorted({shape for _, shape, ok in found if ok}, key=len)
    if len({s for s in exact if len(s) == 4}) > 1:
        listing = ", ".join(f"{name}: {tuple(shape)}" for name, shape, _ in found)
        raise LorakilnError(f"{key}: the inputs disagree on this conv's kernel ({listing})")
    if exact:
        return exact[-1]  # a 4-D (conv) shape wins over a 2-D LoRA view of the same 1×1 conv
    if not key.startswith(keymap.UNET_PREFIX + "_"):
        return found[0][1]  # text encoders (CLIP) have only Linear layers: (out, in) is the shape
    names = ", ".join(sorted({name for name, _, _ in found}))
    raise LorakilnError(
        f"{names}: {key} is a LoHa/LoKr module whose weight shape the file does not record (a conv's "
        "kernel is flattened into its factors); pass --model BASE (with --to lora to still write a LoRA) "
        "so the shape is read from the base model"
    )


def _stand_in(shape: tuple[int, ...]) -> nn.Module:
    """An uninitialised layer of `shape`: the target `FileDeltaAdapter` needs, without a model."""
    if len(shape) == 2:
        return nn.utils.skip_init(nn.Linear, shape[1], shape[0], bias=False)
    return nn.utils.skip_init(nn.Conv2d, shape[1], shape[0], tuple(shape[2:]), bias=False)


class FileDeltas:
    """Per-module ΔW of each input rebuilt from the files (no base model)."""

    def __init__(self, loras: Sequence[KohyaLoRA]) -> None:
        self.loras = list(loras)
        self.owners: dict[str, list[int]] = {}
        for index, lora in enumerate(self.loras):
            for key in lora.modules:
                self.owners.setdefault(key, []).append(index)
        self.keys = sorted(self.owners)
        for key in self.keys:
            for index in self.owners[key]:
                if DORA_KEY in self.loras[index].modules[key][1]:
                    raise LorakilnError(
                        f"{self.loras[index].path.name}: {key} is a DoRA module (dora_scale): the change it makes "
                        "depends on the base weight, so it cannot be merged without one; pass --model BASE "
                        "(with --to lora and --rank N to still write a LoRA)"
                    )
        self.shapes: dict[str, tuple[int, ...]] = {}
        for key in self.keys:
            found = [(self.loras[i].path.name, *_file_shape(*self.loras[i].modules[key])) for i in self.owners[key]]
            self.shapes[key] = resolve_shape(key, found)

    def delta(self, index: int, key: str) -> torch.Tensor:
        """ΔW of input `index` for `key` at strength 1, fp32, in the resolved target shape."""
        lora = self.loras[index]
        algo, parts = lora.modules[key]
        shape = self.shapes[key]
        if algo == "lora":
            return lora.lora_factors(key).delta().reshape(shape)
        try:
            with torch.no_grad():
                return FileDeltaAdapter(_stand_in(shape), algo, parts).delta_weight().detach()
        except (RuntimeError, ValueError) as err:  # factors that do not multiply out to the module's shape
            raise LorakilnError(f"{lora.path}: module {key} ({algo}): its factors do not make a {tuple(shape)} "
                                f"weight ({err}); the file is damaged or was made for another model") from None

    def close(self) -> None:
        """Nothing to release (symmetry with `ModelDeltas`)."""


class ModelDeltas:
    """Per-module ΔW of each input from adapters hooked into `bundle` by `apply_lora_file`.

    Hooking resolves every key to a real module (an unknown key fails here, before any weight
    changes); `target(key)` is that module. `close` removes the hooks.
    """

    def __init__(self, bundle: ModelBundle, specs: Sequence[LoraSpec]) -> None:
        self.applied: list[AppliedLoRA] = []
        try:
            for index, spec in enumerate(specs):
                self.applied.append(apply_lora_file(bundle, spec.path, name=f"merge-input-{index}"))
        except BaseException:
            self.close()
            raise
        self.owners: dict[str, list[int]] = {}
        for index, applied in enumerate(self.applied):
            for key in applied.modules:
                self.owners.setdefault(key, []).append(index)
        self.keys = sorted(self.owners)
        self.shapes = {key: tuple(self.applied[i].modules[key].target_shape)
                       for key, (i, *_) in self.owners.items()}

    def target(self, key: str) -> nn.Module:
        index = self.owners[key][0]
        return self.applied[index].modules[key].target

    def delta(self, index: int, key: str) -> torch.Tensor:
        with torch.no_grad():
            return self.applied[index].modules[key].delta_weight().detach().float()

    def close(self) -> None:
        for applied in self.applied:
            applied.remove()
