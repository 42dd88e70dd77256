"""`LoRANetwork`: every LoRA module of one training run, stored under its kohya export key.

Injection follows kohya's default targets (formats.md §1 "Default targets"): inside U-Net modules
whose class is in ``family.unet_target_blocks`` every Linear and 1×1 Conv2d; inside text-encoder
modules whose class is in ``family.te_target_blocks`` every Linear. On SD1.5's structure that is
192 U-Net and 72 text-encoder modules; q/k/v/out_proj always come together, which diffusers and
A1111 require (§0, §8).

Because each module is registered under its kohya key, ``network.state_dict()`` *is* the kohya
file's tensor dict (``<key>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``): export is a dtype
cast, and resuming from a file is a strict ``load_state_dict``. kohya keys contain no ``.``, so
they are valid ``nn.ModuleDict`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.models.family import ModelFamily
from lorakiln.networks import keymap
from lorakiln.networks.lora import LoRAModule, resolve_alpha

logger = logging.getLogger(__name__)

#: ``ss_network_module`` of a plain kohya LoRA (formats.md §1 "Metadata").
NETWORK_MODULE = "networks.lora"
_PARAM_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


def _is_target_layer(module: nn.Module, allow_conv: bool) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return allow_conv and isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def find_targets(
    model: nn.Module, block_classes: Sequence[str], allow_conv: bool
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(module path, layer)`` for every target layer inside blocks of the given classes.

    Paths are the model's own ``named_modules()`` names; each layer is yielded once even if
    target blocks were nested.
    """
    seen: set[str] = set()
    for block_name, block in model.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for child_name, child in block.named_modules():
            path = f"{block_name}.{child_name}" if block_name else child_name
            if child_name and path not in seen and _is_target_layer(child, allow_conv):
                seen.add(path)
                yield path, child


class LoRANetwork(nn.ModuleDict):
    """All LoRA modules of a run, keyed by kohya export name.

    Attributes: ``family``, ``dim``, ``alpha`` (resolved: never None), ``dropout``,
    ``network_module`` and ``network_args`` (for metadata), and per-module bookkeeping:
    ``parts[key]`` (``"unet"``/``"text_encoder"``/``"text_encoder_2"``) and ``module_paths[key]``
    (the module's path in the live model).
    """

    def __init__(self, family: ModelFamily, dim: int, alpha: float | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.family = family
        self.dim = dim
        self.alpha = resolve_alpha(dim, alpha)
        self.dropout = dropout
        self.network_module = NETWORK_MODULE
        self.network_args: dict[str, str] = {}
        self.parts: dict[str, str] = {}
        self.module_paths: dict[str, str] = {}

    # -- building -----------------------------------------------------------------------

    def add_lora(self, key: str, part: str, module_path: str, target: nn.Module) -> LoRAModule:
        """Create, register and attach the adapter for one target layer."""
        if key in self:
            raise ValueError(f"two modules map to the same LoRA key {key!r}")
        lora = LoRAModule(target, self.dim, self.alpha, self.dropout)
        self[key] = lora
        self.parts[key] = part
        self.module_paths[key] = module_path
        lora.attach()
        return lora

    # -- views --------------------------------------------------------------------------

    def loras(self, part: str | None = None) -> Iterator[tuple[str, LoRAModule]]:
        """``(kohya key, module)`` pairs, optionally only those of one part."""
        for key, module in self.items():
            if part is None or self.parts[key] == part:
                yield key, module  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        """Number of LoRA modules per part, e.g. ``{"unet": 192, "text_encoder": 72}``."""
        out: dict[str, int] = {}
        for part in self.parts.values():
            out[part] = out.get(part, 0) + 1
        return out

    @property
    def trains_text_encoder(self) -> bool:
        return any(p != "unet" for p in self.parts.values())

    # -- training -----------------------------------------------------------------------

    def param_groups(
        self, unet_lr: float | None, text_encoder_lr: float | None, default_lr: float
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one for the U-Net, one for all text encoders.

        ``None`` rates fall back to ``default_lr`` (kohya's ``--learning_rate``). A part without
        modules gets no group. Each group carries a ``"name"`` for logging.
        """
        groups: list[dict[str, Any]] = []
        unet_params = [p for _, m in self.loras("unet") for p in m.parameters()]
        te_params = [p for k, m in self.items() if self.parts[k] != "unet" for p in m.parameters()]
        if unet_params:
            lr = default_lr if unet_lr is None else unet_lr
            groups.append({"name": "unet", "params": unet_params, "lr": lr})
        if te_params:
            lr = default_lr if text_encoder_lr is None else text_encoder_lr
            groups.append({"name": "text_encoder", "params": te_params, "lr": lr})
        return groups

    def freeze_text_encoders(self) -> None:
        """Stop training the text-encoder modules (`train_text_encoder_frac`); the U-Net's go on."""
        for key, module in self.loras():
            if self.parts[key] != "unet":
                module.requires_grad_(False)

    def set_multiplier(self, multiplier: float, part: str | None = None) -> None:
        """Set the strength of every module (or of one part, e.g. A1111's separate TE/U-Net)."""
        for _, module in self.loras(part):
            module.multiplier = float(multiplier)

    def attach(self) -> None:
        """Re-attach every hook after `remove` (idempotent)."""
        for _, module in self.loras():
            module.attach()

    def remove(self) -> None:
        """Detach every hook: the base model computes exactly what it did before injection."""
        for _, module in self.loras():
            module.detach()

    # -- resume -------------------------------------------------------------------------

    def load_kohya_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a kohya LoRA tensor dict (e.g. a saved file) into this network, strictly.

        Missing or unexpected module keys and rank mismatches raise `LorakilnError` naming them:
        resuming onto a differently shaped network would silently train something else. The one
        tolerance is a missing ``.alpha``, which every client reads as alpha = rank (§1), so we do
        too. A file's alpha overrides the network's, as it defines the trained function.
        """
        expected = {f"{k}.{s}" for k in self for s in _PARAM_SUFFIXES}
        given = set(state_dict)
        missing = sorted(k for k in expected - given if not k.endswith(".alpha"))
        unexpected = sorted(given - expected)
        if missing or unexpected:
            raise LorakilnError(_key_error_message(missing, unexpected))
        errors = []
        for key, module in self.loras():
            for name in ("lora_down.weight", "lora_up.weight"):
                want = module.get_parameter(name).shape
                got = state_dict[f"{key}.{name}"].shape
                if got != want:
                    errors.append(f"{key}.{name}: file has shape {tuple(got)}, network {tuple(want)}")
        if errors:
            raise LorakilnError(
                "LoRA file does not fit this network (was it trained with another network_dim?):\n  "
                + "\n  ".join(errors[:10])
                + (f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else "")
            )
        with torch.no_grad():
            for key, module in self.loras():
                for name in ("lora_down.weight", "lora_up.weight"):
                    module.get_parameter(name).copy_(state_dict[f"{key}.{name}"])
                alpha = state_dict.get(f"{key}.alpha")
                if alpha is None:
                    logger.warning("%s has no .alpha; using alpha = rank (scale 1) like kohya", key)
                module.set_alpha(None if alpha is None else float(alpha))


def _key_error_message(missing: list[str], unexpected: list[str]) -> str:
    lines = ["LoRA state dict does not match the network's modules."]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"{label} keys: {shown}")
    lines.append("Check that the file was trained for the same model family and with the same targets.")
    return "\n".join(lines)


def create_lora_network(
    unet: nn.Module | None,
    text_encoders: Sequence[nn.Module],
    family: ModelFamily,
    *,
    dim: int,
    alpha: float | None,
    dropout: float = 0.0,
    train_unet: bool = True,
    train_text_encoder: bool = True,
) -> LoRANetwork:
    """Inject LoRA modules into the U-Net and text encoders and return the network.

    Hooks are attached immediately; the base modules stay in place (see `lorakiln.networks.lora`).
    Text encoder *i* is named with ``family.te_lora_prefixes[i]`` / ``te_diffusers_prefixes[i]``.
    A part that is not trained gets no modules (kohya ``--network_train_unet_only`` drops them
    from the file too).
    """
    if len(text_encoders) > len(family.te_lora_prefixes):
        raise ValueError(
            f"{family.name} has {len(family.te_lora_prefixes)} text encoder(s), got {len(text_encoders)}"
        )
    network = LoRANetwork(family, dim, alpha, dropout)
    if train_unet:
        if unet is None:
            raise ValueError("train_unet=True needs a U-Net")
        for path, layer in find_targets(unet, family.unet_target_blocks, allow_conv=True):
            network.add_lora(keymap.unet_kohya_name(path, family), "unet", path, layer)
    if train_text_encoder:
        for index, encoder in enumerate(text_encoders):
            part = family.te_diffusers_prefixes[index]
            for path, layer in find_targets(encoder, family.te_target_blocks, allow_conv=False):
                network.add_lora(keymap.text_encoder_kohya_name(path, index, family), part, path, layer)
    if len(network) == 0:
        raise ValueError("no LoRA targets found: check train_unet / train_text_encoder and the model family")
    return network
