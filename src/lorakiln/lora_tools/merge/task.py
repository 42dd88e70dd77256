"""TIES and DARE: combining several task vectors (here, one module's weighted LoRA deltas).

Plain addition (``Σ wᵢ·ΔWᵢ``, kohya's ``merge_lora.py``) lets LoRAs that push the same weight in
opposite directions cancel, and lets many small, redundant changes pile up. Two published fixes
work entry by entry on the full deltas, so `lora merge` rebuilds each module's ΔW, combines them
here and factorises the result back into a LoRA (or adds it to a checkpoint):

* **TIES-Merging** (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
  §4 "Steps in TIES-Merging", Algorithm 1): *trim* each task vector to its top-``k`` entries by
  magnitude, *elect* a sign per entry (the sign of the summed trimmed values, i.e. the direction
  with the larger total magnitude), and take the *disjoint mean* of the entries that agree with it.
  The paper trims over a whole model's task vector; like mergekit and peft we trim per tensor
  (here per module), which also keeps a small module from being erased by a large one.
* **DARE** (Yu et al. 2023, "Language Models are Super Mario: Absorbing Abilities from Homologous
  Models as a Free Lunch", §3): *drop* each delta entry with probability ``p`` and *rescale* the
  survivors by ``1 / (1 − p)``, which keeps every entry's expectation; the sparse deltas are then
  summed (task arithmetic) or, for ``dare_ties``, merged with TIES's sign election and disjoint
  mean instead of its trim (§3 "merging models with DARE").

``density`` is the share kept: ``k`` for TIES, ``1 − p`` for DARE. The task vectors are the
*weighted* deltas ``wᵢ·ΔWᵢ`` — a LoRA's strength (negative too) takes part in the sign election —
and the paper's final scale λ is 1, since the strengths already say how much of each to add.
Everything here is pure tensor maths with no file or model access, so the unit tests can check it
on hand-made tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

METHODS: tuple[str, ...] = ("sum", "ties", "dare", "dare_ties")
#: Methods that need ``density``.
SPARSE_METHODS: tuple[str, ...] = ("ties", "dare", "dare_ties")


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES "Trim" (§4): keep the ``round(density · n)`` entries of largest magnitude, zero the rest.

    `torch.topk` keeps exactly that many even when magnitudes tie at the threshold, so the kept
    share is the one asked for.
    """
    _check_density(density)
    if density >= 1.0:
        return delta.clone()
    flat = delta.flatten()
    keep = int(round(density * flat.numel()))
    out = torch.zeros_like(flat)
    if keep > 0:
        index = flat.abs().topk(keep, sorted=False).indices
        out[index] = flat[index]
    return out.reshape(delta.shape)


def elect_sign(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES "Elect" (§4): ``γ = sgn(Σᵢ τ̂ᵢ)`` per entry.

    The sum of the signed values is the positive total magnitude minus the negative one, so its
    sign picks the direction with more total mass (not the one more task vectors vote for). A zero
    sum (every vector zero there, or an exact tie) elects 0 and the entry merges to 0.
    """
    return torch.sign(torch.stack(list(deltas)).sum(0))


def disjoint_mean(deltas: Sequence[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """TIES "Disjoint Merge" (§4): mean over the task vectors whose entry has the elected sign.

    Trimmed (zero) entries never count: ``sgn(0) = 0`` matches no elected ±1. Entries where no
    vector agrees are 0.
    """
    stacked = torch.stack(list(deltas))
    agree = torch.sign(stacked) == sign.unsqueeze(0)
    agree &= stacked != 0
    total = (stacked * agree).sum(0)
    count = agree.sum(0)
    return total / count.clamp(min=1)


def ties(deltas: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-Merging of the (weighted) task vectors `deltas`: trim, elect, disjoint mean."""
    trimmed = [trim(d, density) for d in deltas]
    return disjoint_mean(trimmed, elect_sign(trimmed))


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (§3): keep each entry with probability ``density`` and divide the kept ones by it.

    ``E[keepᵢ / density] = 1`` for every entry, so the expected delta is the original. The mask
    is drawn on the CPU from `generator`, so a seed gives the same result on any device; density 1
    keeps everything (``torch.rand`` is in ``[0, 1)``) and returns `delta` unchanged.
    """
    _check_density(density)
    if density >= 1.0:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return delta * keep.to(delta.device) / density


def dare(deltas: Sequence[torch.Tensor], density: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """DARE then task arithmetic: ``Σᵢ drop-rescale(τᵢ)``."""
    return torch.stack([dare_drop(d, density, g) for d, g in zip(deltas, generators, strict=True)]).sum(0)


def dare_ties(
    deltas: Sequence[torch.Tensor], density: float, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """DARE in place of TIES's trim, then TIES's sign election and disjoint mean."""
    dropped = [dare_drop(d, density, g) for d, g in zip(deltas, generators, strict=True)]
    return disjoint_mean(dropped, elect_sign(dropped))


def module_generator(seed: int, index: int, key: str) -> torch.Generator:
    """The DARE mask generator of input `index` for module `key`.

    Derived from (seed, input position, key) by hashing, not drawn in sequence, so a module's
    mask does not depend on which other modules exist or on the order they are processed in, and
    two inputs never share a mask (even the same file given twice).
    """
    digest = hashlib.sha256(f"{seed}:{index}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def combine(
    method: str,
    deltas: Sequence[torch.Tensor],
    *,
    density: float | None = None,
    generators: Sequence[torch.Generator] = (),
) -> torch.Tensor:
    """Merge one module's weighted deltas by `method` (``sum``, ``ties``, ``dare``, ``dare_ties``)."""
    if not deltas:
        raise ValueError("nothing to combine")
    if method == "sum":
        return torch.stack(list(deltas)).sum(0)
    if method not in SPARSE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; valid: {', '.join(METHODS)}")
    if density is None:
        raise ValueError(f"{method} needs a density")
    if method == "ties":
        return ties(deltas, density)
    if method == "dare":
        return dare(deltas, density, generators)
    return dare_ties(deltas, density, generators)


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
