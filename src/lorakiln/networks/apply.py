"""Apply LoRA files from any kohya-format trainer to a loaded base model, for generation.

Each file becomes a set of forward hooks (one adapter per file module key, with that key's own
rank and alpha, so dynamically resized files work) on the bundle's modules. The algorithm is
detected per module from its keys (LyCORIS ``modules/*.py`` key names): ``lora_down``/``lora_up`` (LoRA and LoCon,
whose conv downs carry the kernel) → `LoRAModule`; ``hada_*`` (LoHa) and ``lokr_*`` (LoKr) →
`file_adapters.FileDeltaAdapter`, as A1111 (``network_hada.py``/``network_lokr.py``) and ComfyUI
(``weight_adapter``) detect them. A module with ``dora_scale`` (DoRA, any algorithm) also becomes a
`FileDeltaAdapter`, applied with the clients' DoRA strength rule (`lorakiln.networks.dora`).
Several files stack;
strengths change by setting multipliers — no reload, no weight copy (issue: "LoRAs are switched
by adapter weights, not by reloading"). Key translation goes through `keymap`, the one place
names are translated; SD1 files with LDM-style U-Net names (accepted by A1111 and ComfyUI, though
diffusers rejects them) are mapped too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorakiln.errors import LorakilnError
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.dora import DORA_KEY
from lorakiln.networks.file_adapters import FileDeltaAdapter, detect_algo
from lorakiln.networks.file_checks import check_fits, read_lora_checked
from lorakiln.networks.file_family import detect_family
from lorakiln.networks.lora import LoRAModule

if TYPE_CHECKING:
    from torch import nn

    from lorakiln.models.bundle import ModelBundle
    from lorakiln.models.family import ModelFamily

logger = logging.getLogger(__name__)


def resolve_target(bundle: ModelBundle, key: str) -> nn.Module:
    """The base module a kohya module key patches (any U-Net naming `keymap.resolve_kohya_module` reads)."""
    family = bundle.family
    try:
        component, path = keymap.resolve_kohya_module(key, family)
    except KeyError:
        raise LorakilnError(f"LoRA key {key!r} is not a {family.name} key") from None
    if component == "unet":
        root: nn.Module = bundle.unet
        candidates = [path]
    else:
        root = bundle.text_encoders[family.te_diffusers_prefixes.index(component)]
        candidates = [path, path.removeprefix("text_model.")]  # transformers >= 5.6 drops `text_model.`
    for candidate in candidates:
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    raise LorakilnError(f"LoRA key {key!r} names no module of this {family.name} model ({path})")


@dataclass
class AppliedLoRA:
    """One LoRA file hooked into a model; strengths are per part, as A1111's te/unet."""

    name: str
    path: Path
    modules: dict[str, LoRAModule | FileDeltaAdapter] = field(default_factory=dict)

    def set_strength(self, te: float, unet: float | None = None) -> None:
        """A1111 `<lora:name:te:unet>` semantics: unet defaults to te."""
        unet = te if unet is None else unet
        for key, module in self.modules.items():
            module.multiplier = unet if key.startswith(keymap.UNET_PREFIX + "_") else te

    def attach(self) -> None:
        """Hook the modules in again after `remove` (no file read: the weights are kept)."""
        for module in self.modules.values():
            if not module.attached:
                module.attach()

    def remove(self) -> None:
        for module in self.modules.values():
            module.detach()


def apply_lora_file(bundle: ModelBundle, path: str | Path, *, te: float = 1.0, unet: float | None = None,
                    name: str | None = None) -> AppliedLoRA:
    """Hook the LoRA in `path` into `bundle` at the given strengths and return its handle."""
    path = Path(path)
    tensors, metadata = read_lora_checked(path)  # structure, NaN/inf and rank layout, before any hook
    made_for = detect_family(tensors, metadata)[0]
    if made_for is not None and made_for != bundle.family.name:
        raise LorakilnError(f"{path.name} is a LoRA for {made_for}, but the loaded base model is "
                            f"{bundle.family.name}; pick a {bundle.family.name} LoRA or another base model")
    groups = group_file_modules(path, tensors, bundle.family)
    applied = AppliedLoRA(name or path.stem, path)
    try:
        for key, (algo, parts) in groups.items():
            module = _module_for(path, key, resolve_target(bundle, key), algo, parts, bundle.family.name)
            module.eval().attach()
            applied.modules[key] = module
    except BaseException:
        applied.remove()  # a refused file leaves no hook behind (grids and merges go on with the model)
        raise
    applied.set_strength(te, unet)
    output_axis = sum(1 for m in applied.modules.values()
                      if isinstance(m, FileDeltaAdapter) and m.dora_axis == "output")
    if output_axis:
        # DoRA axis: A1111 (`network.py` `apply_weight_decompose`) normalises per input column whatever the shape, ComfyUI divides
        # by the base weight's norm on this axis; lorakiln follows LyCORIS, which trained the file.
        logger.warning("%s: %d DoRA module(s) store per-output-row magnitudes (LyCORIS wd_on_output=True); "
                       "lorakiln applies them as LyCORIS defines them, AUTOMATIC1111 and ComfyUI each compute "
                       "other weights from this file", path.name, output_axis)
    return applied


def _module_for(path: Path, key: str, target: nn.Module, algo: str, parts: dict[str, torch.Tensor],
                family: str) -> LoRAModule | FileDeltaAdapter:
    """The adapter for one file module on `target`, refused with its key if it does not fit."""
    if algo == "lora" and DORA_KEY not in parts:
        return _lora_module(path, key, target, parts, family)
    try:
        module = FileDeltaAdapter(target, algo, parts)
        module.delta_weight()  # builds ΔW once: factors of the wrong size fail here, not mid-sampling
    except (ValueError, RuntimeError) as err:
        raise LorakilnError(f"{path}: module {key} ({algo}) does not fit this {family} model: {err}; the file "
                            "was made for another base model or is damaged") from None
    return module


def _lora_module(path: Path, key: str, target: nn.Module, parts: dict[str, torch.Tensor],
                 family: str) -> LoRAModule:
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    alpha = parts.get("alpha")
    module = LoRAModule(target, dim=down.shape[0], alpha=float(alpha) if alpha is not None else None)
    if isinstance(target, torch.nn.Conv2d) and down.dim() == 2:  # A1111: reshape 2-D down for convs
        down, up = down[:, :, None, None], up[:, :, None, None]
    check_fits(path, key, target, (down, up),
               (module.lora_down.weight.shape, module.lora_up.weight.shape), family)
    with torch.no_grad():
        module.lora_down.weight.copy_(down.reshape(module.lora_down.weight.shape))
        module.lora_up.weight.copy_(up.reshape(module.lora_up.weight.shape))
    return module


def group_file_modules(
    path: Path, tensors: dict[str, torch.Tensor], family: ModelFamily
) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """``{module key: (algo, {suffix: tensor})}``, split at the first ``.`` like A1111's ``networks.py``
    ``load_network``.

    Foreign prefixes, unknown suffixes and modules without weights raise `LorakilnError`.
    """
    prefixes = tuple(p + "_" for p in (keymap.UNET_PREFIX, *family.te_lora_prefixes))
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for full_key, tensor in tensors.items():
        key, _, suffix = full_key.partition(".")
        if not key.startswith(prefixes) or not suffix:
            raise LorakilnError(f"{path.name} is not a kohya-format LoRA lorakiln can apply (e.g. key "
                                f"{full_key!r}); diffusers-format files are not supported by the generator")
        grouped.setdefault(key, {})[suffix] = tensor
    out: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
    for key in sorted(grouped):
        try:
            algo = detect_algo(set(grouped[key]))
        except ValueError as err:
            raise LorakilnError(f"{path.name}: {key}: {err}") from None
        out[key] = (algo, grouped[key])
    return out
