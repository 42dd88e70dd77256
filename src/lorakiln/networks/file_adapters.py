"""Read-only LoHa/LoKr adapters built from a file's tensors, for generation (`networks.apply`).

A file's LoHa/LoKr layout is only known from its keys (which LoKr factors are full, Tucker or
not, ranks), so instead of re-deriving LyCORIS's construction rules we hold the tensors as they
are and rebuild ΔW with the same `loha_delta`/`lokr_delta` the training modules use. The scale
follows the readers, not the writer (formats.md §2 "LoKr", §3 "Scale", §4 "load_lora"):

* LoHa: ``dim = hada_w1_b.shape[0]``, scale ``alpha / dim``, no alpha ⇒ 1 (A1111
  ``network_hada.py``, ComfyUI ``weight_adapter/loha.py``);
* LoKr: ``dim = lokr_w1_b.shape[0]``, else ``lokr_w2_b.shape[0]``; scale ``alpha / dim`` when
  both exist, else 1 (A1111 ``network_lokr.py``, ComfyUI ``weight_adapter/lokr.py``).

Hooking and strength are `loha.WeightDeltaAdapter`'s, like the training modules.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lorakiln.networks.loha import WeightDeltaAdapter, loha_delta
from lorakiln.networks.lokr import lokr_delta

#: Per-module key suffixes of each algorithm a kohya/LyCORIS file may hold (formats.md §1, §2).
LORA_SUFFIXES = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
LOHA_SUFFIXES = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"})
LOKR_SUFFIXES = frozenset(
    {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}
)


def detect_algo(suffixes: set[str]) -> str:
    """``lora``/``loha``/``lokr`` from one module's key suffixes; ValueError names what is foreign.

    LoCon files are ``lora``: same keys, conv targets (§2 "LoCon/LoRA"). ``lora_mid`` (LoCon
    Tucker) and ``dora_scale`` are valid LyCORIS keys this generator does not apply.
    """
    for algo, allowed in (("lora", LORA_SUFFIXES), ("loha", LOHA_SUFFIXES), ("lokr", LOKR_SUFFIXES)):
        if suffixes & (allowed - {"alpha"}):
            extra = suffixes - allowed
            if extra:
                raise ValueError(f"{algo} module with keys lorakiln cannot apply: {', '.join(sorted(extra))}")
            return algo
    raise ValueError(f"no LoRA/LoHa/LoKr weights among keys {', '.join(sorted(suffixes))}")


class FileDeltaAdapter(WeightDeltaAdapter):
    """A frozen LoHa or LoKr module: the file's tensors as buffers, ΔW rebuilt per call."""

    def __init__(self, target: nn.Module, algo: str, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__(target)
        if algo not in ("loha", "lokr"):
            raise ValueError(f"FileDeltaAdapter is for loha/lokr, got {algo!r}")
        self.algo = algo
        device = target.weight.device
        self.names = sorted(n for n in tensors if n != "alpha")
        for name in self.names:
            self.register_buffer(name, tensors[name].detach().to(device, torch.float32))
        alpha = tensors.get("alpha")
        if algo == "loha":
            dim: int | None = tensors["hada_w1_b"].shape[0]
        else:
            low_rank = tensors.get("lokr_w1_b", tensors.get("lokr_w2_b"))
            dim = None if low_rank is None else low_rank.shape[0]
        self.scale = float(alpha) / dim if alpha is not None and dim else 1.0

    def _param_dtype(self) -> torch.dtype:
        return torch.float32

    def _get(self, name: str) -> torch.Tensor | None:
        return getattr(self, name) if name in self.names else None

    def delta_weight(self) -> torch.Tensor:
        if self.algo == "loha":
            return loha_delta(
                self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale, self.target_shape,
                self._get("hada_t1"), self._get("hada_t2"),
            )  # fmt: skip
        parts = {n.removeprefix("lokr_"): self._get(n) for n in self.names}
        return lokr_delta(scale=self.scale, target_shape=self.target_shape, **parts)
