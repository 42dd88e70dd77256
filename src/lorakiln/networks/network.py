"""`LoRANetwork`: every LoRA module of one training run, stored under its kohya export key.

Injection follows kohya's default targets (sd-scripts ``networks/lora.py``): inside U-Net modules
whose class is in ``family.unet_target_blocks`` every Linear and 1×1 Conv2d; inside text-encoder
modules whose class is in ``family.te_target_blocks`` every Linear. On SD1.5's structure that is
192 U-Net and 72 text-encoder modules; q/k/v/out_proj always come together, which diffusers and
A1111 require (diffusers drops q/k/v without out_proj; A1111 patches SDXL's TE2 attention only
with all four).

LoCon/LoHa/LoKr (``algo``, see `lorakiln.networks.adapters`) add the U-Net's ResNet and
up/down-sampler layers (`adapters.locon_conv_targets`) and, for LoHa/LoKr, use other module
classes; the key names are the same kohya names (LyCORIS ``kohya.py`` uses kohya's prefixes).

DoRA (``dora_wd``, `lorakiln.networks.dora`) swaps the LoRA/LoCon module class for `DoRAModule`;
the file gains ``<key>.dora_scale`` and records itself as LyCORIS's (``lycoris.kohya``,
``dora_wd``), since kohya's ``networks.lora`` has no such option.

Because each module is registered under its kohya key, ``network.state_dict()`` *is* the kohya
file's tensor dict (``<key>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` — or the
``hada_*``/``lokr_*`` keys of LyCORIS): export is a dtype cast, and resuming from a file is a
strict load against each module's own ``state_dict()`` keys. kohya keys contain no ``.``, so they
are valid ``nn.ModuleDict`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.models.family import ModelFamily
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.adapters import (
    KOHYA_DEFAULT_CONV_ALPHA,
    adapter_spec,
    locon_conv_targets,
    locon_rank,
    make_adapter,
    uses_conv_dim,
)
from lorakiln.networks.lora import resolve_alpha
from lorakiln.networks.network_args import adapter_opts, network_args
from lorakiln.networks.targets import DEFAULT_PRESET, Candidate, TargetRule, file_modules

logger = logging.getLogger(__name__)

#: ``ss_network_module`` of a plain kohya LoRA (as sd-scripts records it).
NETWORK_MODULE = "networks.lora"
#: ``ss_network_module`` of LyCORIS-trained files (LoHa, LoKr, DoRA).
LYCORIS_NETWORK_MODULE = "lycoris.kohya"


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
    """All adapter modules of a run, keyed by kohya export name.

    Attributes: ``family``, ``algo`` (``lora``/``locon``/``loha``/``lokr``), ``dim``, ``alpha``
    (resolved: never None), ``dropout``, ``adapter_opts`` (algorithm options passed to every
    module, ``dora_wd`` included), ``dora`` (weight decomposition on), ``network_module`` and
    ``network_args`` (for metadata), and per-module bookkeeping:
    ``parts[key]`` (``"unet"``/``"text_encoder"``/``"text_encoder_2"``) and ``module_paths[key]``
    (the module's path in the live model).
    """

    def __init__(
        self,
        family: ModelFamily,
        dim: int,
        alpha: float | None,
        dropout: float = 0.0,
        *,
        algo: str = "lora",
        adapter_opts: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        spec = adapter_spec(algo)
        self.family = family
        self.algo = spec.name
        self.dim = dim
        self.alpha = resolve_alpha(dim, alpha)
        self.dropout = dropout
        self.adapter_opts: dict[str, Any] = dict(adapter_opts or {})
        self.dora = bool(self.adapter_opts.get("dora_wd"))
        # kohya's networks.lora cannot train DoRA; LyCORIS can (``ss_network_module = lycoris.kohya``).
        self.network_module = LYCORIS_NETWORK_MODULE if self.dora else spec.network_module
        self.network_args: dict[str, str] = {}
        self.parts: dict[str, str] = {}
        self.module_paths: dict[str, str] = {}

    # -- building -----------------------------------------------------------------------

    def add_adapter(
        self,
        key: str,
        part: str,
        module_path: str,
        target: nn.Module,
        dim: int | None = None,
        alpha: float | None = None,
    ) -> nn.Module:
        """Create, register and attach this network's adapter for one target layer.

        ``dim``/``alpha`` default to the network's (conv layers get ``conv_dim``/``conv_alpha``
        from the caller). Dropout is passed only when set, as LoHa/LoKr refuse it.
        """
        if key in self:
            raise ValueError(f"two modules map to the same LoRA key {key!r}")
        opts = dict(self.adapter_opts)
        if self.dropout:
            opts["dropout"] = self.dropout
        rank = self.dim if dim is None else dim
        module = make_adapter(self.algo, target, rank, self.alpha if dim is None else alpha, **opts)
        self[key] = module
        self.parts[key] = part
        self.module_paths[key] = module_path
        module.attach()  # type: ignore[operator]
        return module

    def add_lora(self, key: str, part: str, module_path: str, target: nn.Module) -> nn.Module:
        """`add_adapter` at the network's own rank and alpha (kept for existing callers)."""
        return self.add_adapter(key, part, module_path, target)

    # -- views --------------------------------------------------------------------------

    def loras(self, part: str | None = None) -> Iterator[tuple[str, Any]]:
        """``(kohya key, adapter module)`` pairs, optionally only those of one part.

        Every adapter class has ``multiplier``, ``attach``/``detach``, ``set_alpha``,
        ``delta_weight`` and a ``state_dict()`` that is its file keys."""
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

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], only: Collection[str] | None = None
    ) -> None:
        """Load a kohya/LyCORIS tensor dict (e.g. a saved file) into this network, strictly.

        The expected keys are each module's own ``state_dict()`` keys (``lora_down.weight``…,
        ``hada_w1_a``…, ``lokr_w1``… — the sd-scripts and LyCORIS key names), so every algorithm and every LoKr
        factor layout is checked the same way. Missing or unexpected keys and shape mismatches
        raise `LorakilnError` naming them: resuming onto a differently shaped network would
        silently train something else. The one tolerance is a missing ``.alpha``, which every
        client reads as alpha = rank (sd-scripts, A1111 ``calc_scale``), so we do too. A file's alpha overrides
        the network's, as it defines the trained function. ``only`` restricts the check and the load
        to those modules (a file holding part of the network; the rest keep their init).
        """
        own = {key: module.state_dict() for key, module in self.loras() if only is None or key in only}
        expected = {f"{k}.{name}" for k, sd in own.items() for name in sd}
        given = set(state_dict)
        missing = sorted(k for k in expected - given if not k.endswith(".alpha"))
        unexpected = sorted(given - expected)
        if missing or unexpected:
            raise LorakilnError(_key_error_message(missing, unexpected))
        errors = []
        for key, sd in own.items():
            for name, tensor in sd.items():
                if name == "alpha":
                    continue
                got = state_dict[f"{key}.{name}"].shape
                if got != tensor.shape:
                    errors.append(f"{key}.{name}: file has shape {tuple(got)}, network {tuple(tensor.shape)}")
        if errors:
            raise LorakilnError(
                "LoRA file does not fit this network (was it trained with another network_dim, conv_dim "
                "or algorithm?):\n  "
                + "\n  ".join(errors[:10])
                + (f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else "")
            )
        with torch.no_grad():
            for key, module in self.loras():
                if key not in own:
                    continue
                for name, param in module.named_parameters():
                    param.copy_(state_dict[f"{key}.{name}"])
                alpha = state_dict.get(f"{key}.alpha")
                if alpha is None:
                    logger.warning("%s has no .alpha; using alpha = rank (scale 1) like kohya", key)
                module.set_alpha(None if alpha is None else float(alpha))


def _key_error_message(missing: list[str], unexpected: list[str]) -> str:
    lines = ["LoRA state dict does not match the network's modules."]
    dora = ".dora_scale"
    if missing and all(k.endswith(dora) for k in missing) and not unexpected:
        lines.append("The file has no DoRA magnitudes (dora_scale): it was not trained with network.dora_wd.")
    elif unexpected and all(k.endswith(dora) for k in unexpected) and not missing:
        lines.append("The file is a DoRA file (dora_scale): set network.dora_wd = true to continue it.")
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
    algo: str = "lora",
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    use_tucker: bool = False,
    lokr_factor: int = -1,
    lokr_decompose_both: bool = False,
    dora_wd: bool = False,
    targets: TargetRule | None = None,
    module_ranks: Mapping[str, int] | None = None,
) -> LoRANetwork:
    """Inject adapter modules into the U-Net and text encoders and return the network.

    Targets: ``targets`` (`lorakiln.networks.targets`; default the ``kohya`` preset, the module
    docstring's set) for every algorithm, plus the LoCon conv targets
    (`adapters.locon_conv_targets`) with the ``full`` preset, or with ``kohya`` when ``conv_dim``
    is set (kohya's ``networks.lora`` with ``conv_dim``) or ``algo`` is ``locon``/``loha``/``lokr``
    (LyCORIS ``kohya.py``: its default preset "full" includes ``ResnetBlock2D``/``Down/Upsample2D``
    and ``conv_dim`` defaults to ``network_dim``, ``conv_alpha`` to ``network_alpha``). kohya's own
    ``conv_alpha`` default is 1 (``networks/lora.py`` ``create_network``). The
    preset's by-name extras (``conv_in``/``conv_out``/``time_embedding``) are left out: A1111's
    name table (``convert_diffusers_name_to_compvis``) has no rule for them, so they would be silently dropped there.

    ``module_ranks`` (kohya's ``--dim_from_weights``) replaces the targets by the file's own
    modules, each at the file's rank: ``{kohya key: rank}``; a key this model has no layer for is
    an error.

    Hooks are attached immediately; the base modules stay in place (see `lorakiln.networks.lora`).
    Text encoder *i* is named with ``family.te_lora_prefixes[i]`` / ``te_diffusers_prefixes[i]``.
    A part that is not trained gets no modules (kohya ``--network_train_unet_only`` drops them
    from the file too). ``dora_wd`` (lora/locon only) makes every module a `DoRAModule`.
    """
    if len(text_encoders) > len(family.te_lora_prefixes):
        raise ValueError(
            f"{family.name} has {len(family.te_lora_prefixes)} text encoder(s), got {len(text_encoders)}"
        )
    rule = targets or TargetRule()
    spec = adapter_spec(algo)
    opts = adapter_opts(spec.name, use_tucker, lokr_factor, lokr_decompose_both, dora_wd)
    network = LoRANetwork(family, dim, alpha, dropout, algo=spec.name, adapter_opts=opts)
    convs = rule.convs or (rule.preset == DEFAULT_PRESET and (conv_dim is not None or spec.name != "lora"))
    if module_ranks is not None:
        convs = True  # the file decides; conv layers absent from it are simply not chosen
    if convs:
        if conv_dim is None:
            conv_dim = dim  # LyCORIS: conv_dim defaults to network_dim
        if conv_alpha is None:
            kohya_locon = spec.name == "lora" and rule.preset == DEFAULT_PRESET
            conv_alpha = KOHYA_DEFAULT_CONV_ALPHA if kohya_locon else network.alpha
    layers: dict[str, nn.Module] = {}
    candidates: list[Candidate] = []

    def offer(key: str, part: str, path: str, layer: nn.Module) -> None:
        layers[key] = layer
        candidates.append(Candidate(key, part, path))

    if train_unet:
        if unet is None:
            raise ValueError("train_unet=True needs a U-Net")
        for path, layer in find_targets(unet, family.unet_target_blocks, allow_conv=True):
            offer(keymap.unet_kohya_name(path, family), "unet", path, layer)
        if convs:
            for path, layer in locon_conv_targets(unet):
                offer(keymap.unet_kohya_name(path, family), "unet", path, layer)
    if train_text_encoder:
        for index, encoder in enumerate(text_encoders):
            part = family.te_diffusers_prefixes[index]
            for path, layer in find_targets(encoder, family.te_target_blocks, allow_conv=False):
                offer(keymap.text_encoder_kohya_name(path, index, family), part, path, layer)
    chosen = rule.select(candidates, convs) if module_ranks is None else file_modules(candidates, module_ranks)
    ranks = _ranks(chosen, layers, dim, network.alpha, conv_dim, conv_alpha, module_ranks)
    conv_ranks = [rank for rank, _, big_conv in ranks.values() if big_conv]
    if module_ranks is not None and conv_ranks:
        conv_dim = conv_alpha = max(conv_ranks)  # recorded as the file's; its alphas load with it
    network.network_args = network_args(spec.name, conv_dim if conv_ranks else None, conv_alpha, opts)
    for c in chosen:
        rank, rank_alpha, _ = ranks[c.key]
        network.add_adapter(c.key, c.part, c.path, layers[c.key], rank, rank_alpha)
    if len(network) == 0:
        raise ValueError("no LoRA targets found: check train_unet / train_text_encoder and the model family")
    return network


def _ranks(chosen: Sequence[Candidate], layers: Mapping[str, nn.Module], dim: int, alpha: float,
           conv_dim: int | None, conv_alpha: float | None, module_ranks: Mapping[str, int] | None,
           ) -> dict[str, tuple[int, float, bool]]:
    """``key → (rank, alpha, is a k×k conv)``: kohya's `locon_rank` rule, or the file's ranks."""
    out: dict[str, tuple[int, float, bool]] = {}
    for c in chosen:
        layer = layers[c.key]
        big_conv = uses_conv_dim(layer)
        if module_ranks is not None:
            rank = module_ranks[c.key]
            out[c.key] = (rank, float(rank), big_conv)  # the file's alpha is loaded with its weights
        elif big_conv:
            assert conv_dim is not None
            out[c.key] = (*locon_rank(layer, dim, alpha, conv_dim, conv_alpha), True)
        else:
            out[c.key] = (dim, alpha, False)
    return out
