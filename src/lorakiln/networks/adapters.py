"""Adapter registry (algorithm name → module class and file keys) and LoCon target selection.

Algorithms (names as LyCORIS's ``algo`` network arg, ``lycoris/kohya.py``):

* ``lora`` — `LoRAModule` (kohya LoRA);
* ``locon`` — the *same* `LoRAModule`, additionally placed on the U-Net's ResNet and
  up/down-sampler layers (`locon_conv_targets`) with its own ``conv_dim``/``conv_alpha``: LoCon is
  a target set, not a different maths (kohya ``networks/lora.py``, LyCORIS ``modules/locon.py``
  write identical ``lora_down``/``lora_up``/``alpha`` keys);
* ``loha`` — `LoHaModule` (Hadamard product, FedPara);
* ``lokr`` — `LoKrModule` (Kronecker product).

DoRA is not an algorithm of its own but an option of one (LyCORIS ``dora_wd``): ``lora``/``locon``
with ``dora_wd=True`` make a `DoRAModule`, which writes the same keys plus ``dora_scale``. LyCORIS
also decomposes LoHa/LoKr; lorakiln trains DoRA on LoRA/LoCon only (and applies any of them in
generation, `lorakiln.networks.file_adapters`).

Each module's ``state_dict()`` is already its file format, so the registry only has to say which
per-module key suffixes belong to which algorithm (for reading files back and for spec tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from lorakiln.networks.dora import DORA_KEY, DoRAModule
from lorakiln.networks.loha import LoHaModule
from lorakiln.networks.lokr import LoKrModule
from lorakiln.networks.lora import LoRAModule, resolve_alpha


@dataclass(frozen=True)
class AdapterSpec:
    """What lorakiln knows about one algorithm.

    ``key_suffixes`` are every per-module key the algorithm may write (optional ones included:
    Tucker cores, the one-or-the-other LoKr factors); ``network_module`` is the
    ``ss_network_module`` kohya/LyCORIS record for it (sd-scripts ``train_network.py`` metadata);
    ``dora_class`` the module class used with ``dora_wd=True`` (None: DoRA is not offered).
    """

    name: str
    module_class: type[nn.Module]
    key_suffixes: tuple[str, ...]
    network_module: str
    dora_class: type[nn.Module] | None = None


_LORA_KEYS = ("lora_down.weight", "lora_up.weight", "alpha", DORA_KEY)

ADAPTERS: dict[str, AdapterSpec] = {
    "lora": AdapterSpec("lora", LoRAModule, _LORA_KEYS, "networks.lora", DoRAModule),
    # kohya writes LoCon as `networks.lora` + conv_dim in ss_network_args; LyCORIS as
    # `lycoris.kohya` + algo=locon. The keys are the same.
    "locon": AdapterSpec("locon", LoRAModule, _LORA_KEYS, "networks.lora", DoRAModule),
    "loha": AdapterSpec(
        "loha", LoHaModule,
        ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"),
        "lycoris.kohya",
    ),
    "lokr": AdapterSpec(
        "lokr", LoKrModule,
        ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"),
        "lycoris.kohya",
    ),
}  # fmt: skip


def adapter_spec(algo: str) -> AdapterSpec:
    """The registry entry for ``algo`` (case-insensitive); the error lists the valid names."""
    try:
        return ADAPTERS[algo.lower()]
    except KeyError:
        raise ValueError(f"unknown network algorithm {algo!r}; valid: {', '.join(ADAPTERS)}") from None


def make_adapter(
    algo: str, target_layer: nn.Module, dim: int, alpha: float | None, *, dora_wd: bool = False, **opts: Any
) -> nn.Module:
    """Create the ``algo`` adapter for one layer (not yet attached).

    ``opts`` are the algorithm's keyword options: ``dropout``, ``multiplier`` for all;
    ``use_tucker`` for LoHa; ``factor``, ``decompose_both``, ``use_tucker``, ``full_matrix``,
    ``unbalanced_factorization`` for LoKr. An option the algorithm does not take raises a
    ``TypeError`` naming the algorithm, instead of being silently ignored. ``dora_wd`` (LyCORIS's
    name) picks the algorithm's DoRA class; algorithms without one raise ``ValueError``.
    """
    spec = adapter_spec(algo)
    cls = spec.module_class
    if dora_wd:
        if spec.dora_class is None:
            raise ValueError(f"DoRA (dora_wd) is available with lora/locon, not with {spec.name!r}")
        cls = spec.dora_class
    try:
        return cls(target_layer, dim, alpha, **opts)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"network algorithm {spec.name!r}: {exc}") from None
        raise


# -- LoCon targets ------------------------------------------------------------------------------

#: The U-Net blocks LoCon adds: kohya ``networks/lora.py``
#: ``UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]``,
#: used when ``conv_dim`` is given; the same classes are in LyCORIS's "full" preset
#: (``lycoris/config.py`` ``FULL_UNET_MODULES``) next to ``Transformer2DModel``.
LOCON_BLOCK_CLASSES: tuple[str, ...] = ("ResnetBlock2D", "Downsample2D", "Upsample2D")

#: U-Net modules LyCORIS's "full" preset also targets by name (``FULL_UNET_NAMES``); plain kohya
#: LoCon does not. Opt in with ``locon_conv_targets(..., lycoris_full=True)``.
LYCORIS_FULL_UNET_NAMES: tuple[str, ...] = (
    "conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2",
)  # fmt: skip


def locon_conv_targets(unet: nn.Module, *, lycoris_full: bool = False) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(module path, layer)`` for every layer LoCon adds to the U-Net, in model order.

    kohya's rule (``LoRANetwork.create_modules``): *every* ``nn.Linear`` and ``nn.Conv2d`` inside a
    ``ResnetBlock2D``/``Downsample2D``/``Upsample2D``. On SD1 that is, per resnet, ``conv1`` and
    ``conv2`` (3×3), ``time_emb_proj`` (Linear) and ``conv_shortcut`` (1×1, only where the
    channel count changes), plus ``downsamplers.0.conv`` (3×3, stride 2) and
    ``upsamplers.0.conv`` (3×3). Which rank each gets is `locon_rank`'s business.
    LyCORIS's ``kohya.py`` selects the same layers (its ``create_single_module`` takes any
    Linear/Conv inside a target block); ``lycoris_full=True`` adds its by-name extras
    `LYCORIS_FULL_UNET_NAMES`. The oracle test checks both against ``lycoris.kohya``.
    """
    seen: set[str] = set()
    for block_name, block in unet.named_modules():
        if type(block).__name__ not in LOCON_BLOCK_CLASSES:
            continue
        for child_name, child in block.named_modules():
            path = f"{block_name}.{child_name}" if block_name else child_name
            if child_name and path not in seen and isinstance(child, nn.Linear | nn.Conv2d):
                seen.add(path)
                yield path, child
    if lycoris_full:
        for name, module in unet.named_modules():
            if (
                name in LYCORIS_FULL_UNET_NAMES
                and name not in seen
                and isinstance(module, nn.Linear | nn.Conv2d)
            ):
                seen.add(name)
                yield name, module


#: kohya's ``conv_alpha`` when ``conv_dim`` is set without it (``create_network``); LyCORIS
#: instead defaults ``conv_alpha`` to ``network_alpha`` (``lycoris/kohya.py``).
KOHYA_DEFAULT_CONV_ALPHA = 1.0


def uses_conv_dim(layer: nn.Module) -> bool:
    """True for convs with a kernel larger than 1×1 (kohya/LyCORIS give them ``conv_dim``)."""
    return isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1)


def locon_rank(
    layer: nn.Module, dim: int, alpha: float | None, conv_dim: int, conv_alpha: float | None
) -> tuple[int, float]:
    """``(rank, alpha)`` for a LoCon target, by kohya's rule.

    Linear and 1×1 conv layers (``time_emb_proj``, ``conv_shortcut``) get ``network_dim`` /
    ``network_alpha``; larger kernels get ``conv_dim`` / ``conv_alpha`` (kohya
    ``create_modules``: ``if is_linear or is_conv2d_1x1: dim = lora_dim … elif conv_lora_dim``;
    LyCORIS ``create_single_module``: ``k_size == 1`` → ``lora_dim``, else ``conv_lora_dim``).
    Alpha None/0 means alpha = rank, as everywhere.
    """
    if uses_conv_dim(layer):
        return conv_dim, resolve_alpha(conv_dim, conv_alpha)
    return dim, resolve_alpha(dim, alpha)
