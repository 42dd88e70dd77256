"""Low-rank factorisation of weight deltas: the SVD core of resize, extract and merges.

Every tool that turns a full ΔW back into a LoRA module (`lora resize`, `lora extract`, the SVD
and TIES/DARE merges) goes through `factorize`, so "how many singular values to keep" and "how
the kept part is split between ``lora_up`` and ``lora_down``" are decided once.

Rank choice follows kohya's ``networks/resize_lora.py`` dynamic methods:

* ``fixed``: the given rank;
* ``sv_ratio``: keep singular values ``σ > σ_max / ratio`` (strictly, as kohya's ``S > min_sv``);
* ``sv_fro``: the smallest rank whose kept Frobenius norm is at least ``target`` of the whole
  (``sqrt(Σσ²_kept / Σσ²) ≥ target``);
* ``sv_cumulative``: the smallest rank whose kept sum of singular values is at least ``target``
  of the whole.

The dynamic rank is capped by ``max_rank`` (kohya's ``--new_rank``). The kept part is split
evenly, ``up = U·√σ``, ``down = √σ·Vᵀ`` (both divided by ``√scale``), so both factors have the
same magnitude — the split best suited to fp16 storage and to further training; clients only
ever see ``scale · up @ down``, which equals the truncated ΔW whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

RankMethod = Literal["fixed", "sv_ratio", "sv_fro", "sv_cumulative"]
RANK_METHODS: tuple[str, ...] = ("fixed", "sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class LowRank:
    """One module's factorised delta: ``ΔW ≈ (alpha / rank) · up @ down``.

    ``up`` is ``[out, r]`` (``[out, r, 1, 1]`` for convs), ``down`` ``[r, in]`` (``[r, in, kh,
    kw]``). ``energy`` is the kept share of ‖ΔW‖²_F (1.0 = lossless); ``fro`` its square root,
    the share of the Frobenius norm kohya's resize prints.
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float
    energy: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def fro(self) -> float:
        return self.energy**0.5

    def delta(self) -> torch.Tensor:
        """The delta these factors add, in the original weight's shape (fp32)."""
        shape = (self.up.shape[0], *self.down.shape[1:])
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()
        return (product * (self.alpha / self.rank)).reshape(shape)


def choose_rank(singular: torch.Tensor, method: RankMethod, value: float, max_rank: int | None = None) -> int:
    """The rank to keep for singular values ``singular`` (descending) by `method`.

    ``value`` is the rank for ``fixed`` and the ratio/target for the dynamic methods. The result
    is at least 1 and at most ``len(singular)`` and ``max_rank``.
    """
    full = int(singular.numel())
    s = singular.double()
    if method == "fixed":
        if value < 1 or value != int(value):
            raise ValueError(f"a fixed rank must be a positive integer, got {value}")
        rank = int(value)
    elif float(s[0]) == 0.0:
        rank = 1  # an all-zero delta: keep one (zero) component rather than an empty module
    elif method == "sv_ratio":
        if value < 1:
            raise ValueError(f"sv_ratio must be >= 1 (keep σ > σ_max / ratio), got {value}")
        rank = int((s > s[0] / value).sum())
    elif method in ("sv_fro", "sv_cumulative"):
        if not 0 < value <= 1:
            raise ValueError(f"{method} target must be in (0, 1], got {value}")
        parts = s.pow(2) if method == "sv_fro" else s
        target = value**2 if method == "sv_fro" else value
        share = torch.cumsum(parts, 0) / parts.sum()
        # first rank whose kept share reaches the target (tolerate rounding at the full rank)
        rank = int(torch.searchsorted(share, torch.tensor(target - 1e-12, dtype=share.dtype))) + 1
    else:
        raise ValueError(f"unknown rank method {method!r}; valid: {', '.join(RANK_METHODS)}")
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(1, min(rank, full))


def factorize(
    delta: torch.Tensor,
    method: RankMethod = "fixed",
    value: float = 4,
    *,
    max_rank: int | None = None,
    alpha: float | None = None,
) -> LowRank:
    """Truncated SVD of ``delta`` (``[out, in]`` or ``[out, in, kh, kw]``) as LoRA factors.

    ``alpha`` None keeps ``alpha = rank`` (scale 1); a number keeps that alpha, as kohya's
    resize does with ``--new_alpha``-less runs that carry the old scale. Computed in fp64 on the
    tensor's device so a full-rank resize is lossless to fp32 precision.
    """
    if delta.dim() not in (2, 4):
        raise ValueError(f"a weight delta must be 2-D (linear) or 4-D (conv), got shape {tuple(delta.shape)}")
    matrix = delta.flatten(1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = choose_rank(s, method, value, max_rank)
    total = float(s.pow(2).sum())
    energy = float(s[:rank].pow(2).sum()) / total if total > 0 else 1.0
    alpha = float(rank) if alpha is None else float(alpha)
    root = (s[:rank] / (alpha / rank)).sqrt()
    up = (u[:, :rank] * root).float()
    down = (root[:, None] * vh[:rank]).float()
    if delta.dim() == 4:
        up = up[:, :, None, None]
        down = down.reshape(rank, *delta.shape[1:])
    return LowRank(up.contiguous(), down.contiguous(), alpha, energy)
