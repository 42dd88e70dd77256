"""LoHa (low-rank Hadamard product) adapter, plus the base class of every ΔW-building adapter.

LoHa is FedPara (Hyeon-Woo et al. 2022, "FedPara: Low-Rank Hadamard Product for
Communication-Efficient Federated Learning") as LyCORIS ships it for Stable Diffusion:

    ΔW = (hada_w1_a @ hada_w1_b) ⊙ (hada_w2_a @ hada_w2_b) · alpha / dim

The element-wise product of two rank-``dim`` matrices has rank up to ``dim²``, so a LoHa of dim
``r`` reaches the expressiveness of a LoRA of rank ``r²`` with ``2×`` the LoRA-``r`` parameters.

File format and semantics are those of LyCORIS ``lycoris/modules/loha.py`` (``LohaModule``) and
``lycoris/functional/loha.py``, read by A1111 ``network_hada.py`` and
ComfyUI ``weight_adapter/loha.py``:

* keys ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (plain parameters, no
  ``.weight``), 0-dim ``alpha``; ``*_a`` is ``[out, r]`` and ``*_b`` is ``[r, in·kh·kw]``;
* Tucker (``use_tucker`` on a conv whose kernel is not 1×1): ``hada_t1``/``hada_t2``
  ``[r, r, kh, kw]``, ``*_a`` ``[r, out]``, ``*_b`` ``[r, in]`` and each half is rebuilt as
  ``einsum("i j k l, j r, i p -> p r k l", t, b, a)`` (LyCORIS ``HadaWeightTucker.forward``);
* alpha None/0 means alpha = dim; ``scale = alpha / dim`` (LyCORIS without ``rs_lora``);
* init: ``w1_b ~ N(0, 1)``, ``w1_a ~ N(0, 0.1)``, ``w2_b ~ N(0, 1)``, ``w2_a = 0`` (and
  ``t ~ N(0, 0.1)``), so a fresh adapter is an exact no-op. The calls are made in LyCORIS's
  order, so under the same seed both produce identical tensors (checked by the oracle test).

Like `lorakiln.networks.lora` the adapter is attached with a forward hook on the original layer
(see that module for why); the branch applies ΔW with the target's own op:
``out = org(x) + multiplier · F(x; ΔW)`` with ``F`` = ``F.linear`` or ``F.conv2d`` with the
target's stride/padding/dilation/groups — LyCORIS's non-bypass ``forward``.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakiln.networks.hooks import HookedAdapter
from lorakiln.networks.lora import AlphaScaled, resolve_alpha

# LyCORIS's LoHa init standard deviations (``LohaModule.__init__``; "need more experiments").
_STD_B, _STD_A, _STD_TUCKER = 1.0, 0.1, 0.1


def tucker_rebuild(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[r, r, kh, kw]`` core with ``a`` ``[r, out]`` and ``b`` ``[r, in]`` → ``[out, in, kh, kw]``.

    The core's first index pairs with ``a`` (output side), its second with ``b`` (input side), as
    in LyCORIS ``HadaWeightTucker.forward`` and ``functional.general.rebuild_tucker``.
    """
    return torch.einsum("i j ..., i p, j r -> p r ...", core, a, b)


def loha_delta(
    w1_a: torch.Tensor,
    w1_b: torch.Tensor,
    w2_a: torch.Tensor,
    w2_b: torch.Tensor,
    scale: float,
    target_shape: torch.Size | tuple[int, ...],
    t1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
) -> torch.Tensor:
    """ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · scale, in fp32, reshaped to the target weight shape.

    With Tucker cores ``t1``/``t2`` each half is ``tucker_rebuild(t, a, b)`` instead. The product
    order (both halves, then the scale) is LyCORIS's ``HadaWeight.forward``.
    """
    if (t1 is None) != (t2 is None):
        raise ValueError("LoHa Tucker needs both hada_t1 and hada_t2")
    if t1 is not None and t2 is not None:
        half1 = tucker_rebuild(t1.float(), w1_a.float(), w1_b.float())
        half2 = tucker_rebuild(t2.float(), w2_a.float(), w2_b.float())
    else:
        half1 = w1_a.float() @ w1_b.float()
        half2 = w2_a.float() @ w2_b.float()
    return (half1 * half2 * scale).reshape(target_shape)


class WeightDeltaAdapter(HookedAdapter, abc.ABC):
    """Base of adapters whose branch is ``F(x; ΔW)``: LoHa, LoKr.

    These algorithms have no cheap factorised forward for convolutions, so they rebuild ΔW from
    their factors on every call and run the target's own op with it (LyCORIS's default,
    non-bypass mode). Subclasses define `delta_weight`; attachment, the hook, multiplier and
    dtype handling are shared and identical to `lorakiln.networks.lora.LoRAModule`: fp32
    parameters whatever the base dtype, the input cast up, the result cast to the base output's
    dtype, and multiplier 0 returning the base output untouched.

    The target is a plain attribute, not a submodule, so ``state_dict()`` holds only the
    file's keys.
    """

    def __init__(self, target: nn.Module, multiplier: float = 1.0) -> None:
        super().__init__(target)
        if isinstance(target, nn.Linear):
            self._conv_args: dict[str, object] | None = None
        elif isinstance(target, nn.Conv2d):
            if target.padding_mode != "zeros":
                raise ValueError(
                    f"{type(self).__name__} needs a zero-padded conv, got padding_mode={target.padding_mode!r}"
                )
            self._conv_args = {
                "stride": target.stride, "padding": target.padding,
                "dilation": target.dilation, "groups": target.groups,
            }  # fmt: skip
        else:
            raise TypeError(
                f"{type(self).__name__} supports nn.Linear and nn.Conv2d targets, got {type(target).__name__}"
            )
        self.target_shape = tuple(target.weight.shape)
        self.multiplier = float(multiplier)

    # -- maths ------------------------------------------------------------------------------

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """ΔW at multiplier 1, fp32, in the target weight's shape (each algorithm's own maths)."""

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``multiplier · F(x; ΔW)`` — the amount added to the target's output."""
        weight = self.delta_weight() * self.multiplier
        x = x.to(self._param_dtype())
        if self._conv_args is None:
            return F.linear(x, weight)
        return F.conv2d(x, weight, None, **self._conv_args)  # type: ignore[arg-type]

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if self.multiplier == 0.0:
            return output  # exact base output, no wasted compute
        return output + self(args[0]).to(output.dtype)


class LoHaModule(AlphaScaled, WeightDeltaAdapter):
    """LoHa adapter for one Linear or Conv2d; ``state_dict()`` is the LyCORIS per-module keys."""

    def __init__(
        self,
        target: nn.Module,
        dim: int,
        alpha: float | None = None,
        *,
        use_tucker: bool = False,
        multiplier: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(target, multiplier)
        alpha = resolve_alpha(dim, alpha)
        if dropout:
            # LyCORIS accepts `dropout` for LoHa but does not apply it in its rebuild forward
            # ("LoHa/LoKr haven't implemented normal dropout yet"); refuse rather than ignore.
            raise ValueError("LoHa does not support dropout (LyCORIS does not implement it either)")
        out_dim, in_dim, *kernel = self.target_shape
        device = target.weight.device
        # Tucker only where there is a spatial kernel to factor (LyCORIS: `any(k != 1)`).
        self.tucker = bool(use_tucker) and any(k != 1 for k in kernel)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=torch.float32, device=device))

        if self.tucker:
            self.hada_t1 = param(dim, dim, *kernel)
            self.hada_w1_a = param(dim, out_dim)
            self.hada_w1_b = param(dim, in_dim)
            self.hada_t2 = param(dim, dim, *kernel)
            self.hada_w2_a = param(dim, out_dim)
            self.hada_w2_b = param(dim, in_dim)
            nn.init.normal_(self.hada_t1, std=_STD_TUCKER)
            nn.init.normal_(self.hada_t2, std=_STD_TUCKER)
        else:
            fan_in = in_dim * math.prod(kernel)
            self.hada_w1_a = param(out_dim, dim)
            self.hada_w1_b = param(dim, fan_in)
            self.hada_w2_a = param(out_dim, dim)
            self.hada_w2_b = param(dim, fan_in)
        # Same call order as LyCORIS, so the same seed gives the same tensors.
        nn.init.normal_(self.hada_w1_b, std=_STD_B)
        nn.init.normal_(self.hada_w1_a, std=_STD_A)
        nn.init.normal_(self.hada_w2_b, std=_STD_B)
        nn.init.zeros_(self.hada_w2_a)  # one zero factor ⇒ ΔW = 0: exact no-op at init
        self.init_alpha(dim, alpha, device)

    def delta_weight(self) -> torch.Tensor:
        return loha_delta(
            self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale, self.target_shape,
            self.hada_t1 if self.tucker else None, self.hada_t2 if self.tucker else None,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, alpha={float(self.alpha):g}, tucker={self.tucker}, "
            f"multiplier={self.multiplier:g}"
        )
