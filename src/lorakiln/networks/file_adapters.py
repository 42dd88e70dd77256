"""Read-only adapters built from a file's tensors, for generation (`networks.apply`): LoHa, LoKr
and any DoRA module (LoRA/LoCon, LoHa or LoKr with ``dora_scale``).

A file's LoHa/LoKr layout is only known from its keys (which LoKr factors are full, Tucker or
not, ranks), so instead of re-deriving LyCORIS's construction rules we hold the tensors as they
are and rebuild ΔW with the same `loha_delta`/`lokr_delta` the training modules use. The scale
follows the readers, not the writer (A1111 ``network.py`` ``calc_scale`` / ``network_lokr.py``, ComfyUI
``comfy/lora.py`` ``load_lora``):

* LoRA (DoRA only; plain LoRA goes through `LoRAModule`): ``dim = lora_down.shape[0]``, scale
  ``alpha / dim``, no alpha ⇒ 1 (A1111 ``calc_scale``, ComfyUI ``LoRAAdapter``);
* LoHa: ``dim = hada_w1_b.shape[0]``, scale ``alpha / dim``, no alpha ⇒ 1 (A1111
  ``network_hada.py``, ComfyUI ``weight_adapter/loha.py``);
* LoKr: ``dim = lokr_w1_b.shape[0]``, else ``lokr_w2_b.shape[0]``; scale ``alpha / dim`` when
  both exist, else 1 (A1111 ``network_lokr.py``, ComfyUI ``weight_adapter/lokr.py``).

With ``dora_scale`` the module applies ``W + s·(W' − W)``, ``W' = m·(W + ΔW)/‖W + ΔW‖`` — the
A1111/ComfyUI rule (`lorakiln.networks.dora`), for every algorithm, as both clients decompose
after any module type. The axis comes from the magnitude's shape, as ComfyUI detects it:
``[1, in(, 1, 1)]`` (what lorakiln writes; A1111 and ComfyUI agree on it) or ``[out, 1(, 1, 1)]``
(LyCORIS's default), which lorakiln applies as LyCORIS trained it, normalising ``W + ΔW`` per
output row — A1111 and ComfyUI each compute something else from such files (see `dora`).

One difference from the clients, only when several files patch one layer: A1111 and
ComfyUI patch the weight file after file, so a DoRA module normalises the weight *as the files
before it left it*; lorakiln's hooks all see the base weight, as if the DoRA file came first.

Hooking and strength are `loha.WeightDeltaAdapter`'s, like the training modules.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lorakiln.networks.dora import DORA_KEY, Axis, dora_delta, magnitude_axis
from lorakiln.networks.loha import WeightDeltaAdapter, loha_delta
from lorakiln.networks.lokr import lokr_delta
from lorakiln.networks.lora import delta_weight

#: Per-module key suffixes of each algorithm a kohya/LyCORIS file may hold (sd-scripts, LyCORIS ``modules``).
LORA_SUFFIXES = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
LOHA_SUFFIXES = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"})
LOKR_SUFFIXES = frozenset(
    {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}
)


def detect_algo(suffixes: set[str]) -> str:
    """``lora``/``loha``/``lokr`` from one module's key suffixes; ValueError names what is foreign.

    LoCon files are ``lora``: same keys, conv targets (LyCORIS ``modules/locon.py``). ``dora_scale`` may come
    with any of them (LyCORIS ``weight_list``; callers check for it). ``lora_mid`` (LoCon Tucker)
    is a valid LyCORIS key this generator does not apply.
    """
    for algo, allowed in (("lora", LORA_SUFFIXES), ("loha", LOHA_SUFFIXES), ("lokr", LOKR_SUFFIXES)):
        if suffixes & (allowed - {"alpha"}):
            extra = suffixes - allowed - {DORA_KEY}
            if extra:
                raise ValueError(f"{algo} module with keys lorakiln cannot apply: {', '.join(sorted(extra))}")
            return algo
    raise ValueError(f"no LoRA/LoHa/LoKr weights among keys {', '.join(sorted(suffixes))}")


class FileDeltaAdapter(WeightDeltaAdapter):
    """A frozen LoHa or LoKr module, or any module with ``dora_scale``: the file's tensors as
    buffers, the weight change rebuilt per call."""

    def __init__(self, target: nn.Module, algo: str, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__(target)
        self.dora = DORA_KEY in tensors
        if algo not in ("loha", "lokr") and not (algo == "lora" and self.dora):
            raise ValueError(f"FileDeltaAdapter is for loha/lokr and DoRA modules, got {algo!r}")
        self.algo = algo
        device = target.weight.device
        self.names = sorted(n for n in tensors if n not in ("alpha", DORA_KEY))
        for name in self.names:
            self.register_buffer(name.replace(".", "_"), tensors[name].detach().to(device, torch.float32))
        alpha = tensors.get("alpha")
        if algo == "lora":
            dim: int | None = tensors["lora_down.weight"].shape[0]
        elif algo == "loha":
            dim = tensors["hada_w1_b"].shape[0]
        else:
            low_rank = tensors.get("lokr_w1_b", tensors.get("lokr_w2_b"))
            dim = None if low_rank is None else low_rank.shape[0]
        self.scale = float(alpha) / dim if alpha is not None and dim else 1.0
        self.dora_axis: Axis | None = None
        if self.dora:
            magnitude = tensors[DORA_KEY]
            try:
                self.dora_axis = magnitude_axis(tuple(magnitude.shape), self.target_shape)
            except ValueError as err:
                raise ValueError(f"{err} (the layer it patches)") from None
            self.register_buffer("dora_scale", magnitude.detach().to(device, torch.float32))

    def _param_dtype(self) -> torch.dtype:
        return torch.float32

    def _get(self, name: str) -> torch.Tensor | None:
        return getattr(self, name.replace(".", "_")) if name in self.names else None

    def _algo_delta(self) -> torch.Tensor:
        """ΔW of the file's algorithm at strength 1, before any decomposition."""
        if self.algo == "lora":
            up, down = self._get("lora_up.weight"), self._get("lora_down.weight")
            assert up is not None and down is not None  # detect_algo saw LoRA keys
            return delta_weight(up, down, self.scale, self.target_shape)
        if self.algo == "loha":
            return loha_delta(
                self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale, self.target_shape,
                self._get("hada_t1"), self._get("hada_t2"),
            )  # fmt: skip
        parts = {n.removeprefix("lokr_"): self._get(n) for n in self.names}
        return lokr_delta(scale=self.scale, target_shape=self.target_shape, **parts)

    def delta_weight(self) -> torch.Tensor:
        delta = self._algo_delta()
        if self.dora_axis is None:
            return delta
        return dora_delta(self.target.weight, delta, self.dora_scale, self.dora_axis)
