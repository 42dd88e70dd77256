"""DoRA: weight-decomposed low-rank adaptation, as a LoRA/LoCon option (LyCORIS ``dora_wd``).

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", eq. 5) splits a weight
into a magnitude vector ``m`` and a direction, and lets LoRA move only the direction:

    W' = m · (W + ΔW) / ‖W + ΔW‖,    ΔW = (alpha / dim) · lora_up @ lora_down

``m`` (the file's ``dora_scale``) starts as ``‖W‖``, so a fresh module is an exact no-op, and is
trained with the LoRA factors. As in the paper (§4.3) and PEFT, ``‖W + ΔW‖`` is treated as a
constant in the backward pass: the value is the same, but autograd keeps no graph through the
norm, which saves the memory of a second full-size weight per layer. (lycoris-lora 4.1.3's eager
path does back-propagate through the norm; forwards are identical, gradients are not.)

**The axis: per input column.** The norm is taken per *input* column — over the output and
kernel axes — and ``dora_scale`` has shape ``[1, in]`` (Linear) or ``[1, in, 1, 1]`` (Conv2d). In
LyCORIS terms that is ``dora_wd=True`` with ``wd_on_output=False``; LyCORIS's *default*,
``wd_on_output=True`` (``[out, 1(, 1, 1)]``, per output row), is deliberately not used, because
only the input axis is read the same way by both big clients (checked in
their sources):

* AUTOMATIC1111 ``extensions-builtin/Lora/network.py`` ``apply_weight_decompose`` always
  normalises ``merged = W + updown`` with ``merged.transpose(0, 1).reshape(in, -1).norm(dim=1)``,
  i.e. per input column, whatever the shape of ``dora_scale``; an ``[out, 1]`` magnitude is
  broadcast against ``[1, in]`` norms, which is not DoRA at all;
* ComfyUI ``comfy/weight_adapter/base.py`` ``weight_decompose`` picks the axis from the shape
  (``dora_scale.shape[0] == W.shape[0]`` → output axis). Its input-axis branch normalises
  ``W + ΔW`` like A1111; its output-axis branch divides by the norm of the *base* weight ``W``
  instead of ``W + ΔW`` (an open upstream fix, Comfy-Org/ComfyUI#15458, says so).

So with ``[1, in]`` magnitudes A1111 and ComfyUI compute the same weight, the one lorakiln
trains; with ``[out, 1]`` they compute two different ones, neither of them LyCORIS's.

**Scale and strength.** A client at strength ``s`` (A1111 multiplier, ComfyUI LoRA strength)
patches ``W ← W + s · (W' − W)`` with ``W'`` built from ``W + (alpha/dim)·up@down``: ComfyUI
``weight_decompose`` (``lora_diff *= alpha``, then ``weight += strength · (weight_calc − weight)``)
and A1111 since its DoRA scale fix (AUTOMATIC1111/stable-diffusion-webui#16151: ``updown ·
calc_scale()``, then the decomposition, then ``· multiplier()``). A1111 releases before that fix
applied ``alpha/dim`` *after* the decomposition; they agree only for ``alpha = dim``. lorakiln's
modules follow the current rule at every multiplier (`DoRAModule` adds
``multiplier · F(x; W' − W)``), so strength 0 is the base model bit for bit. LyCORIS's own
``LoConModule`` at multiplier ``s ≠ 1`` does something else (it keeps the full ΔW and
interpolates only the rescale factor); ``lycoris.functional.general.apply_dora_scale`` is the
client rule.

Norms are clamped below at float32 eps instead of A1111's bare division (ComfyUI and LyCORIS
add eps): a zero column then stays zero instead of becoming NaN, and a fresh module — whose
norm is bitwise ``m`` — still gives exactly ``W' = W``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from lorakiln.networks.loha import WeightDeltaAdapter
from lorakiln.networks.lora import AlphaScaled, LoRAModule, delta_weight

#: Per-module key of the magnitude vector (LyCORIS ``LoConModule.weight_list``).
DORA_KEY = "dora_scale"

Axis = Literal["input", "output"]

#: The axis lorakiln trains (see the module docstring for why).
TRAINING_AXIS: Axis = "input"

_EPS = torch.finfo(torch.float32).eps


def magnitude_shape(weight_shape: torch.Size | tuple[int, ...], axis: Axis) -> tuple[int, ...]:
    """``[1, in(, 1, 1)]`` for the input axis, ``[out, 1(, 1, 1)]`` for the output axis (LyCORIS)."""
    out_dim, in_dim, *kernel = weight_shape
    if axis == "input":
        return (1, in_dim, *[1] * len(kernel))
    return (out_dim, 1, *[1] * len(kernel))


def weight_norm(weight: torch.Tensor, axis: Axis) -> torch.Tensor:
    """‖·‖₂ of each input column (over output and kernel axes) or each output row, in fp32,
    shaped like the magnitude so it broadcasts against the weight."""
    w = weight.float()
    if axis == "input":
        norms = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    else:
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
    return norms.reshape(magnitude_shape(w.shape, axis))


def magnitude_axis(scale_shape: torch.Size | tuple[int, ...], weight_shape: torch.Size | tuple[int, ...]) -> Axis:
    """Which axis a file's ``dora_scale`` belongs to, by ComfyUI's rule (``comfy/weight_adapter``): its first
    dimension equals the layer's output size → output axis; one value per input channel → input
    axis. Anything else does not fit the layer (ValueError)."""
    out_dim, in_dim = weight_shape[0], weight_shape[1]
    count = math.prod(scale_shape)
    if scale_shape and scale_shape[0] == out_dim and count == out_dim:
        return "output"
    if count == in_dim:
        return "input"
    raise ValueError(
        f"dora_scale of shape {tuple(scale_shape)} fits neither axis of a {tuple(weight_shape)} weight"
    )


def dora_weight(
    weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: Axis = TRAINING_AXIS
) -> torch.Tensor:
    """``W' = m · (W + ΔW) / ‖W + ΔW‖`` (paper eq. 5) in fp32, the norm detached (§4.3).

    ``magnitude`` may have any shape with the right number of values (files store it flat or
    keep-dim); it is laid out for ``axis`` here.
    """
    merged = weight.float() + delta.float()
    norm = weight_norm(merged, axis).clamp_min(_EPS).detach()
    return merged * (magnitude.float().reshape(norm.shape) / norm)


def dora_delta(
    weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: Axis = TRAINING_AXIS
) -> torch.Tensor:
    """``W' − W``: what a client adds to the weight at strength 1 (strength ``s`` adds ``s·(W' − W)``)."""
    return dora_weight(weight, delta, magnitude, axis) - weight.float()


class DoRAModule(AlphaScaled, WeightDeltaAdapter):
    """LoRA/LoCon with weight decomposition for one Linear or Conv2d.

    ``state_dict()`` is LyCORIS's LoCon-with-``dora_wd`` module: ``lora_down.weight``,
    ``lora_up.weight`` (kohya shapes and init, built by `LoRAModule` itself so the two can never
    drift apart), 0-dim ``alpha`` and ``dora_scale`` ``[1, in(, 1, 1)]`` = the base weight's
    column norms. The branch is ``multiplier · F(x; W' − W)`` with the target's own op, so the
    hooked layer computes ``F(x; W + multiplier·(W' − W))`` — the clients' strength rule.

    Dropout is refused: DoRA has no branch input to drop (LyCORIS ignores ``network_dropout``
    with DoRA and warns; lorakiln says so up front instead).
    """

    def __init__(
        self,
        target: nn.Module,
        dim: int,
        alpha: float | None = None,
        *,
        multiplier: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(target, multiplier)
        if dropout:
            raise ValueError("DoRA (dora_wd) does not support network_dropout: its update is a whole weight, "
                             "not a branch with an input to drop")
        factors = LoRAModule(target, dim, alpha)  # kohya shapes, init and target checks
        self.lora_down = factors.lora_down
        self.lora_up = factors.lora_up
        weight = target.weight.detach()
        self.dora_scale = nn.Parameter(weight_norm(weight, TRAINING_AXIS))
        self.init_alpha(dim, alpha, weight.device)

    def lora_delta(self) -> torch.Tensor:
        """The LoRA part ``ΔW = (alpha/dim) · up @ down`` that moves the direction."""
        return delta_weight(self.lora_up.weight, self.lora_down.weight, self.scale, self.target_shape)

    def delta_weight(self) -> torch.Tensor:
        """``W' − W`` at multiplier 1, against the target's current weight (fp32)."""
        return dora_delta(self.target.weight, self.lora_delta(), self.dora_scale, TRAINING_AXIS)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha={float(self.alpha):g}, dora=input-axis, multiplier={self.multiplier:g}"
