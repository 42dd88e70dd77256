"""The LoRA adapter: pure delta maths plus a thin module that hooks it onto a base layer.

Semantics follow kohya sd-scripts exactly (``networks/lora.py``: alpha, scale, dtype and default
targets, LoCon, shapes"), because the files we export are read by clients that assume them:

* rank ``r`` = ``network_dim``; ``alpha`` None/0 means ``alpha = r``; ``scale = alpha / r``;
* Linear target: ``lora_down`` ``[r, in]`` (kaiming-uniform, a=√5), ``lora_up`` ``[out, r]`` (zeros,
  so a fresh network is an exact no-op);
* Conv2d target: ``lora_down`` is a conv with the target's kernel/stride/padding ``[r, in, kh, kw]``,
  ``lora_up`` a 1×1 conv ``[out, r, 1, 1]``;
* ``out = org(x) + up(down(x)) · multiplier · scale``.

**Why a forward hook and not a wrapper module.** The adapter is attached with
``register_forward_hook`` on the *original* module, which stays where it is in the model:

* module names, ``state_dict`` keys and ``named_modules()`` of the base model do not change, so
  diffusers/transformers code (attention processors, gradient checkpointing, saving the base) keeps
  working and the key map never has to strip a wrapper level;
* the hook runs inside the module's ``__call__``, so activation checkpointing recomputes it exactly
  like the base layer;
* ``handle.remove()`` restores the untouched base model (used by ``LoRANetwork.remove``).

The cost is that the LoRA branch recomputes ``down(x)`` from the layer input rather than sharing a
kernel with the base matmul — identical to what kohya's ``forward`` replacement does.

LoRA parameters are kept in fp32 even when the base model is fp16/bf16: low-rank updates are small
relative to the weights and lose most of their precision in half types. The hook casts the input up
and the result back to the base output dtype (under autocast, autocast decides the matmul dtype).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakiln.networks.hooks import HookedAdapter


def resolve_alpha(dim: int, alpha: float | None) -> float:
    """kohya rule: ``network_alpha`` None or 0 means alpha = rank (scale 1) — sd-scripts ``networks/lora.py``."""
    if dim <= 0:
        raise ValueError(f"LoRA rank (network_dim) must be a positive integer, got {dim}")
    if alpha is None or alpha == 0:
        return float(dim)
    return float(alpha)


class AlphaScaled(nn.Module):
    """The kohya `alpha` bookkeeping every rank-based adapter shares (sd-scripts ``networks/lora.py``).

    A 0-dim float32 `alpha` buffer, saved in files as `<module>.alpha` like kohya's
    `register_buffer("alpha", torch.tensor(alpha))`, and the python-float `scale = alpha / dim`
    the maths multiplies by (a float, so forward costs no extra tensor op). LoRA, LoHa, LoKr
    and DoRA mix this in; an adapter with its own alpha rule overrides `effective_alpha`.
    """

    dim: int
    alpha: torch.Tensor
    scale: float

    def init_alpha(self, dim: int, alpha: float | None, device: torch.device | str | None) -> None:
        """Register the buffer and set the scale (call once, at the end of `__init__`)."""
        self.dim = dim
        self.register_buffer("alpha", torch.tensor(0.0, dtype=torch.float32, device=device))
        self.set_alpha(alpha)

    def effective_alpha(self, alpha: float | None) -> float:
        """The alpha this adapter uses for a requested one: kohya's None/0 → dim."""
        return resolve_alpha(self.dim, alpha)

    def set_alpha(self, alpha: float | None) -> None:
        """Change alpha (e.g. from a loaded file) and the cached python-float scale with it."""
        value = self.effective_alpha(alpha)
        self.alpha.fill_(value)
        self.scale = value / self.dim


def delta_weight(
    up: torch.Tensor, down: torch.Tensor, scale: float, target_shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """ΔW = scale · up @ down, reshaped to the target layer's weight shape.

    One function shared by merging, export checks and tests, so "what the adapter adds" is
    defined once (peft's ``delta_weight`` idea). For a conv target
    ``up`` is ``[out, r, 1, 1]`` and ``down`` ``[r, in, kh, kw]``: a 1×1 conv after a kh×kw conv is
    itself a kh×kw conv whose kernel is the flattened product — the same formula ComfyUI and
    A1111 use when they patch weights (A1111 ``network.py`` ``finalize_updown``, ComfyUI ``comfy/lora.py``).
    """
    product = up.flatten(1).float() @ down.flatten(1).float()
    return (product * scale).reshape(target_shape)


class LoRAModule(AlphaScaled, HookedAdapter):
    """Low-rank adapter for one Linear or Conv2d of the base model.

    Its own ``state_dict`` is ``{"lora_down.weight", "lora_up.weight", "alpha"}`` — exactly the
    kohya per-module keys, so a network registered under kohya names serialises 1:1 to the file.
    The base module is *not* a submodule (that would drag its weights into ``state_dict``); it is
    held as a plain attribute and touched only through the forward hook.
    """

    def __init__(
        self,
        target: nn.Module,
        dim: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        multiplier: float = 1.0,
    ) -> None:
        super().__init__(target)
        alpha = resolve_alpha(dim, alpha)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        weight = target.weight
        device = weight.device
        if isinstance(target, nn.Linear):
            self.lora_down: nn.Module = nn.Linear(target.in_features, dim, bias=False, device=device)
            self.lora_up: nn.Module = nn.Linear(dim, target.out_features, bias=False, device=device)
        elif isinstance(target, nn.Conv2d):
            if target.groups != 1 or target.dilation != (1, 1):
                raise ValueError(
                    "LoRA on grouped or dilated convolutions is not supported "
                    f"(groups={target.groups}, dilation={target.dilation})"
                )
            if isinstance(target.padding, str):
                raise ValueError(f"LoRA needs numeric conv padding, got padding={target.padding!r}")
            self.lora_down = nn.Conv2d(
                target.in_channels, dim, target.kernel_size, target.stride, target.padding,
                bias=False, device=device,
            )  # fmt: skip
            self.lora_up = nn.Conv2d(dim, target.out_channels, 1, 1, bias=False, device=device)
        else:
            raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d targets, got {type(target).__name__}")
        # kohya init: kaiming-uniform down (what nn.Linear/Conv2d default to), zero up so the
        # freshly injected network leaves the base output unchanged.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.init_alpha(dim, alpha, device)
        self.multiplier = float(multiplier)
        # Dropout on the LoRA branch input (PEFT's `lora_dropout` placement). kohya's
        # `network_dropout` instead drops the `down` output; both regularise the branch only.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_p = dropout
        self.linear = isinstance(target, nn.Linear)
        self.target_shape = tuple(weight.shape)

    # -- maths ------------------------------------------------------------------------------

    def lora_output(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled-by-multiplier branch ``up(down(dropout(x))) · scale`` in LoRA dtype."""
        x = x.to(self.lora_down.weight.dtype)
        return self.lora_up(self.lora_down(self.dropout(x))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``multiplier · scale · up(down(x))`` — the amount added to the target's output."""
        return self.lora_output(x) * self.multiplier

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        """``output + multiplier · scale · up(down(x))`` in as few ops as the dtypes allow.

        The hook runs on every adapted layer in every forward, so on small models its op count is
        the step time (profiled on the peer bench's micro model: 7,800 ops per step, 512 of them
        the two scalar multiplies and their backward). When the branch already has the output's
        dtype (fp32 training, or autocast), ``torch.add(..., alpha=)`` folds both scalars into
        the add: one kernel forward and none extra backward. Otherwise (an fp32 LoRA on a
        half-precision base without autocast) the branch is scaled in fp32 before the cast, so
        small updates are not rounded away.
        """
        multiplier = self.multiplier
        if multiplier == 0.0:
            return output  # exact base output, and no wasted compute (strength 0 in generation)
        x = args[0]
        weight = self.lora_down.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)
        if self.training and self.dropout_p:
            x = self.dropout(x)
        if self.linear:  # the functional call skips two nn.Module dispatches per layer and step
            branch = F.linear(F.linear(x, weight), self.lora_up.weight)
        else:
            branch = self.lora_up(self.lora_down(x))
        factor = self.scale * multiplier
        if branch.dtype == output.dtype:
            return torch.add(output, branch, alpha=factor)
        return output + (branch * factor).to(output.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW of this adapter at multiplier 1 (see module-level `delta_weight`)."""
        return delta_weight(self.lora_up.weight, self.lora_down.weight, self.scale, self.target_shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha={float(self.alpha):g}, multiplier={self.multiplier:g}"
