"""LoKr (low-rank Kronecker product) adapter.

LoKr is the Kronecker-product adapter of LyCORIS (Yeh et al. 2024, "Navigating Text-To-Image
Customization: From LyCORIS Fine-Tuning to Model Evaluation", ICLR):

    ΔW = kron(w1, w2) · scale,   w1 [a, c] (small), w2 [b, d(, kh, kw)] (large)

with ``out = a·b`` and ``in = c·d`` split by `factorization`. Either factor may itself be low rank
("decompose either side"): ``w1 = lokr_w1_a @ lokr_w1_b`` (only with ``decompose_both``),
``w2 = lokr_w2_a @ lokr_w2_b`` or, for a k×k conv with Tucker, ``rebuild(lokr_t2, w2_a, w2_b)``.

Shapes, flags and alpha follow LyCORIS ``lycoris/modules/lokr.py`` (``LokrModule.__init__``) so
our ``state_dict()`` is its file format (LyCORIS ``modules/lokr.py``), read by A1111
``network_lokr.py`` and ComfyUI ``weight_adapter/lokr.py``:

* ``w1`` is decomposed iff ``decompose_both and dim < max(a, c)/2 and not full_matrix``;
* ``w2`` is decomposed iff ``dim < max(b, d)/2 and not full_matrix`` — so a large ``dim``
  silently gives a *full* ``lokr_w2`` (LyCORIS logs "lora_dim … is too large … using full
  matrix mode");
* conv, w2 decomposed, no Tucker: ``lokr_w2_a`` ``[b, r]``, ``lokr_w2_b`` ``[r, d·kh·kw]``
  (flattened, 2-D in the file); Tucker: ``lokr_t2`` ``[r, r, kh, kw]``, ``lokr_w2_a`` ``[r, b]``,
  ``lokr_w2_b`` ``[r, d]``; full: ``lokr_w2`` ``[b, d, kh, kw]``;
* **alpha**: ``scale = alpha / dim`` (alpha None/0 → dim) whenever at least one side is
  decomposed; only when *both* ``w1`` and ``w2`` are full matrices does LyCORIS force
  ``alpha = dim`` (``if self.use_w2 and self.use_w1: alpha = lora_dim``), i.e. scale 1 — which
  is also what readers do, as they take the rank from ``w1_b``/``w2_b`` and use scale 1 when
  neither exists (LyCORIS);
* init: a full ``w2`` is zero, else ``w2_b`` is zero (and ``t2``, ``w2_a`` kaiming-uniform);
  ``w1`` (or ``w1_a``, ``w1_b``) kaiming-uniform — an exact no-op at init, in LyCORIS's call
  order so the same seed gives the same tensors.

Attachment, hook and dtype handling are those of `lorakiln.networks.loha.WeightDeltaAdapter`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from lorakiln.networks.loha import WeightDeltaAdapter, tucker_rebuild
from lorakiln.networks.lora import AlphaScaled, resolve_alpha

logger = logging.getLogger(__name__)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m ≤ n``, ``m·n = dimension`` — LyCORIS's rule.

    * ``factor > 0`` dividing ``dimension``: ``(factor, dimension / factor)`` sorted;
    * otherwise walk the divisors upwards from 1 while they are ≤ ``factor`` (any, for
      ``factor < 0``) and the pair has not crossed √dimension: the most balanced split allowed.

    Behaviour-identical to ``lycoris.functional.general.factorization`` — e.g. ``(128) → (8, 16)``,
    ``(128, 4) → (4, 32)``, ``(250, 8) → (5, 50)``, ``(360) → (18, 20)`` (LyCORIS's docstring
    table says ``(8, 45)`` for the last one; its code, which wrote every LoKr file, gives
    ``(18, 20)``). The oracle test compares both for many inputs.
    """
    if dimension < 1:
        raise ValueError(f"cannot factorise dimension {dimension}")
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        divisor = m + 1
        while dimension % divisor:
            divisor += 1
        if divisor > limit:
            break
        m, n = divisor, dimension // divisor
    return (m, n) if m <= n else (n, m)


def lokr_delta(
    *,
    scale: float,
    target_shape: torch.Size | tuple[int, ...],
    w1: torch.Tensor | None = None,
    w1_a: torch.Tensor | None = None,
    w1_b: torch.Tensor | None = None,
    w2: torch.Tensor | None = None,
    w2_a: torch.Tensor | None = None,
    w2_b: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
) -> torch.Tensor:
    """ΔW = kron(w1, w2) · scale in fp32, reshaped to the target weight's shape.

    Arguments are the file's tensors without the ``lokr_`` prefix; each side is given either
    full (``w1``/``w2``) or as a factor pair (``w1_a``+``w1_b``, ``w2_a``+``w2_b`` plus ``t2`` for
    Tucker). A 2-D ``w1`` meeting a 4-D ``w2`` gets trailing singleton axes, so the Kronecker
    product leaves the kernel axes alone (LyCORIS ``functional.lokr.make_kron``). A flattened
    conv ``w2`` ``[b, d·kh·kw]`` gives ``[a·b, c·d·kh·kw]``, which reshapes to the same
    ``[a·b, c·d, kh, kw]`` as the 4-D form.
    """
    left = _side("w1", w1, w1_a, w1_b)
    if t2 is not None:
        if w2 is not None or w2_a is None or w2_b is None:
            raise ValueError("LoKr Tucker needs lokr_t2 with lokr_w2_a and lokr_w2_b, not lokr_w2")
        right = tucker_rebuild(t2.float(), w2_a.float(), w2_b.float())
    else:
        right = _side("w2", w2, w2_a, w2_b)
    while left.dim() < right.dim():
        left = left.unsqueeze(-1)
    return (torch.kron(left, right.contiguous()) * scale).reshape(target_shape)


def _side(
    name: str, full: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None
) -> torch.Tensor:
    if full is not None:
        if a is not None or b is not None:
            raise ValueError(f"LoKr: give lokr_{name} or lokr_{name}_a/_b, not both")
        return full.float()
    if a is None or b is None:
        raise ValueError(f"LoKr: lokr_{name} is missing (neither lokr_{name} nor both lokr_{name}_a/_b)")
    return a.float() @ b.float()


class LoKrModule(AlphaScaled, WeightDeltaAdapter):
    """LoKr adapter for one Linear or Conv2d; ``state_dict()`` is the LyCORIS per-module keys.

    Options (LyCORIS ``network_args`` of the same names): ``factor`` (−1: most balanced split),
    ``decompose_both`` (also factor ``w1``), ``use_tucker`` (Tucker ``w2`` on k×k convs),
    ``full_matrix`` (never decompose), ``unbalanced_factorization`` (swap the output split, so
    the *large* output factor goes to ``w1``).
    """

    def __init__(
        self,
        target: nn.Module,
        dim: int,
        alpha: float | None = None,
        *,
        factor: int = -1,
        decompose_both: bool = False,
        use_tucker: bool = False,
        full_matrix: bool = False,
        unbalanced_factorization: bool = False,
        multiplier: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(target, multiplier)
        alpha = resolve_alpha(dim, alpha)
        if dropout:
            raise ValueError("LoKr does not support dropout (LyCORIS does not implement it either)")
        out_dim, in_dim, *kernel = self.target_shape
        device = target.weight.device
        factor = int(factor)
        in_m, in_n = factorization(in_dim, factor)
        out_l, out_k = factorization(out_dim, factor)
        if unbalanced_factorization:
            out_l, out_k = out_k, out_l
        self.factor = factor
        self.tucker = bool(use_tucker) and any(k != 1 for k in kernel)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=torch.float32, device=device))

        # w1 = [out_l, in_m]: the small "scale" factor.
        self.use_w1 = not (decompose_both and dim < max(out_l, in_m) / 2 and not full_matrix)
        if self.use_w1:
            self.lokr_w1 = param(out_l, in_m)
        else:
            self.lokr_w1_a = param(out_l, dim)
            self.lokr_w1_b = param(dim, in_m)
        # w2 = [out_k, in_n, *kernel]: the large factor, low rank unless dim is too large for it.
        self.use_w2 = full_matrix or dim >= max(out_k, in_n) / 2
        if self.use_w2:
            if not full_matrix:
                logger.info(
                    "LoKr dim %d is too large for a %d×%d factor (factor=%d): using a full lokr_w2",
                    dim, out_k, in_n, factor,
                )  # fmt: skip
            self.lokr_w2 = param(out_k, in_n, *kernel)
        elif self.tucker:
            self.lokr_t2 = param(dim, dim, *kernel)
            self.lokr_w2_a = param(dim, out_k)
            self.lokr_w2_b = param(dim, in_n)
        else:
            self.lokr_w2_a = param(out_k, dim)
            self.lokr_w2_b = param(dim, in_n * math.prod(kernel))
        # Same init calls in the same order as LyCORIS `LokrModule.__init__`.
        if self.use_w2:
            nn.init.zeros_(self.lokr_w2)
        else:
            if self.tucker:
                nn.init.kaiming_uniform_(self.lokr_t2, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            nn.init.zeros_(self.lokr_w2_b)
        if self.use_w1:
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        else:
            nn.init.kaiming_uniform_(self.lokr_w1_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5))
        self.init_alpha(dim, alpha, device)

    @property
    def fully_full(self) -> bool:
        """Both factors full matrices: no rank anywhere, so LyCORIS pins alpha = dim (scale 1)."""
        return self.use_w1 and self.use_w2

    def effective_alpha(self, alpha: float | None) -> float:
        """With both factors full alpha is forced to ``dim`` (LyCORIS); else kohya's rule."""
        return float(self.dim) if self.fully_full else resolve_alpha(self.dim, alpha)

    def delta_weight(self) -> torch.Tensor:
        return lokr_delta(
            scale=self.scale,
            target_shape=self.target_shape,
            w1=self.lokr_w1 if self.use_w1 else None,
            w1_a=None if self.use_w1 else self.lokr_w1_a,
            w1_b=None if self.use_w1 else self.lokr_w1_b,
            w2=self.lokr_w2 if self.use_w2 else None,
            w2_a=None if self.use_w2 else self.lokr_w2_a,
            w2_b=None if self.use_w2 else self.lokr_w2_b,
            t2=self.lokr_t2 if self.tucker and not self.use_w2 else None,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, alpha={float(self.alpha):g}, factor={self.factor}, w1={'full' if self.use_w1 else 'a@b'}, "
            f"w2={'full' if self.use_w2 else ('tucker' if self.tucker else 'a@b')}, multiplier={self.multiplier:g}"
        )
