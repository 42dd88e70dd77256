"""ZipLoRA's per-module adapters: two frozen LoRAs and their learnable merger vectors.

ZipLoRA (Shah et al. 2023, arXiv 2311.13600, method section) merges a subject LoRA ΔW_c and a
style LoRA ΔW_s per layer as ``ΔW_m = m_c ⊗ ΔW_c + m_s ⊗ ΔW_s``, where ``⊗`` multiplies the
*j-th column* of ΔW by the j-th element of the merger vector m. In PyTorch's weight layout
(``[out, in]``, ``y = W x``) a column is one **input** feature, so m has ``in_features``
entries (mkshing/ziplora-pytorch broadcasts its ``[in_features]`` mergers over the last axis of
``[out, in]`` the same way). Scaling the input axis of ``ΔW = scale · up @ down`` only touches
``down``'s columns, which is why the merge stays an ordinary LoRA (see `ZipModule.merged_factors`).
For convolutions (LoCon, 1×1 ``proj_in``/``proj_out``) a column is one input channel; the
merger is shared over the kernel taps, so ``conv(x, down·m) == conv(m⊙x, down)`` stays exact.

One `ZipModule` hooks each base module that either LoRA patches and adds what the current mode
asks for, so a single model evaluates the base (D), each input LoRA (D_c, D_s), the ZipLoRA
merge (D_m) and the plain average/sum baselines without reloading anything:

* ``base``: nothing; ``subject`` / ``style``: that LoRA at strength 1;
* ``merged``: ``m_c ⊗ ΔW_c + m_s ⊗ ΔW_s`` where both LoRAs have the module, else the one that has
  it unchanged ("kept as they are": there is nothing to interfere with);
* ``average``: ``0.5·ΔW_c + 0.5·ΔW_s``; ``sum``: ``ΔW_c + ΔW_s`` (the merger's starting point).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.lowrank.lowrank import LowRank
from lorakiln.networks.apply import resolve_target
from lorakiln.networks.hooks import HookedAdapter
from lorakiln.networks.lora import delta_weight

if TYPE_CHECKING:
    from lorakiln.lora_tools.files.lorafile import KohyaLoRA
    from lorakiln.models.bundle import ModelBundle

Mode = Literal["base", "subject", "style", "merged", "average", "sum"]
MODES: tuple[str, ...] = ("base", "subject", "style", "merged", "average", "sum")
#: Fixed per-LoRA strengths of the modes that have no learned mergers.
_FIXED: dict[str, tuple[float | None, float | None]] = {
    "base": (None, None), "subject": (1.0, None), "style": (None, 1.0), "average": (0.5, 0.5),
    "sum": (1.0, 1.0),
}


def _fit_to(target: nn.Module, f: LowRank, key: str, name: str) -> LowRank:
    """`f` with shapes checked against `target` (2-D factors on a 1×1 conv reshaped, as A1111 does)."""
    if isinstance(target, nn.Conv2d):
        up, down = f.up, f.down
        if down.dim() == 2:
            up, down = up.reshape(*up.shape[:2], 1, 1), down[:, :, None, None]
        want = (target.out_channels, target.in_channels, *target.kernel_size)
        if target.groups != 1 or target.dilation != (1, 1) or isinstance(target.padding, str):
            raise LorakilnError(f"{name}: {key} patches a grouped/dilated conv, which ZipLoRA cannot merge")
        f = LowRank(up, down, f.alpha, f.energy)
    elif isinstance(target, nn.Linear):
        want = (target.out_features, target.in_features)
    else:
        raise LorakilnError(f"{name}: {key} patches a {type(target).__name__}; "
                            "LoRA targets are Linear/Conv2d")
    got = (f.up.shape[0], *f.down.shape[1:])
    if tuple(got) != want or f.up.shape[1] != f.down.shape[0]:
        raise LorakilnError(f"{name}: {key} has factors for a {tuple(got)} weight, but this base model's "
                            f"module is {want}; was the LoRA trained on another base model?")
    return f


class ZipModule(HookedAdapter):
    """One base module's subject/style branches and (when both exist) merger vectors m_c, m_s.

    The base module is held as a plain attribute (not a submodule, so its weights never enter
    this module's parameters) and patched through a forward hook, as `networks.lora.LoRAModule`.
    """

    def __init__(self, key: str, target: nn.Module, subject: LowRank | None, style: LowRank | None,
                 device: torch.device) -> None:
        super().__init__(target)
        self.key = key
        self.inputs = (subject, style)
        self.branches = [None if f is None else self._frozen(f, device) for f in (subject, style)]
        in_dim = (subject or style).down.shape[1]  # type: ignore[union-attr]
        both = subject is not None and style is not None
        # Paper: merger vectors start at 1, so the first step is the plain sum ΔW_c + ΔW_s.
        self.m_c = nn.Parameter(torch.ones(in_dim, device=device)) if both else None
        self.m_s = nn.Parameter(torch.ones(in_dim, device=device)) if both else None
        self.mode: str = "base"

    @staticmethod
    def _frozen(f: LowRank, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
        return f.up.to(device, torch.float32), f.down.to(device, torch.float32), f.alpha / f.rank

    @property
    def learns(self) -> bool:
        """Whether both LoRAs patch this module (only then are there mergers to learn)."""
        return self.m_c is not None

    def coefficients(self, mode: str) -> tuple[torch.Tensor | float | None, torch.Tensor | float | None]:
        """(subject, style) column scales for `mode`: a merger vector, a strength, or None (off)."""
        if mode == "merged":
            return (self.m_c if self.learns else 1.0), (self.m_s if self.learns else 1.0)
        return _FIXED[mode]

    def _scaled_down(self, down: torch.Tensor, coef: torch.Tensor | float) -> torch.Tensor:
        """``down`` with its input columns scaled: ``up @ (down·diag(m)) == (up @ down)·diag(m)``."""
        if isinstance(coef, float):
            return down * coef
        return down * coef.view(1, -1, *([1] * (down.dim() - 2)))

    def branch_output(self, x: torch.Tensor, mode: str) -> torch.Tensor | None:
        """What the mode adds to the target's output for input `x`, or None when nothing."""
        out = None
        x32 = x.to(torch.float32)  # factors stay fp32 (networks/lora.py: half types lose low-rank detail)
        for branch, coef in zip(self.branches, self.coefficients(mode), strict=True):
            if branch is None or coef is None:
                continue
            up, down, scale = branch
            down = self._scaled_down(down, coef)
            if down.dim() == 4:
                t = self.target
                y = F.conv2d(F.conv2d(x32, down, None, t.stride, t.padding), up)
            else:
                y = F.linear(F.linear(x32, down), up)
            out = y * scale if out is None else out + y * scale
        return out

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        extra = self.branch_output(args[0], self.mode)
        return output if extra is None else output + extra.to(output.dtype)

    def alignment(self) -> torch.Tensor:
        """``|cos(m_c, m_s)|``: the paper's term that pushes the two mergers towards disjoint columns."""
        assert self.m_c is not None and self.m_s is not None
        return F.cosine_similarity(self.m_c, self.m_s, dim=0, eps=1e-8).abs()

    def merged_delta(self) -> torch.Tensor:
        """``m_c ⊗ ΔW_c + m_s ⊗ ΔW_s`` (single LoRA: its ΔW) in the weight's shape, fp32."""
        total = None
        for branch, coef in zip(self.branches, self.coefficients("merged"), strict=True):
            if branch is None:
                continue
            up, down, scale = branch
            shape = (up.shape[0], *down.shape[1:])
            delta = delta_weight(up, self._scaled_down(down, coef), scale, shape)
            total = delta if total is None else total + delta
        assert total is not None
        return total

    def merged_factors(self) -> LowRank:
        """The merge as kohya factors: the exact rank concatenation, alpha = rank (scale 1).

        ``up = [s_c·up_c, s_s·up_s]``, ``down = [down_c·diag(m_c); down_s·diag(m_s)]``, so
        ``up @ down = m_c ⊗ ΔW_c + m_s ⊗ ΔW_s`` to fp32 rounding; any LoRA client loads it. A
        module only one input has is that input's factors, alpha included, as they are.
        """
        if not self.learns:
            single = next(f for f in self.inputs if f is not None)
            return LowRank(single.up.cpu(), single.down.cpu(), single.alpha, single.energy)
        ups, downs = [], []
        for branch, coef in zip(self.branches, self.coefficients("merged"), strict=True):
            if branch is None:
                continue
            up, down, scale = branch
            ups.append(up * scale)
            downs.append(self._scaled_down(down, coef))
        up, down = torch.cat(ups, dim=1).detach().cpu(), torch.cat(downs, dim=0).detach().cpu()
        return LowRank(up.contiguous(), down.contiguous(), float(down.shape[0]), 1.0)


class ZipSet:
    """Every `ZipModule` of one merge, hooked into a bundle; `using(mode)` switches them all."""

    def __init__(self, bundle: ModelBundle, subject: KohyaLoRA, style: KohyaLoRA,
                 device: torch.device) -> None:
        self.modules: dict[str, ZipModule] = {}
        for key in sorted(set(subject.modules) | set(style.modules)):
            target = resolve_target(bundle, key)
            factors = [_fit_to(target, lora.lora_factors(key), key, lora.path.name) if key in lora.modules
                       else None for lora in (subject, style)]
            self.modules[key] = ZipModule(key, target, factors[0], factors[1], device)
        for module in self.modules.values():
            module.attach()

    @property
    def learned(self) -> list[ZipModule]:
        """The modules both LoRAs patch: the ones with merger vectors."""
        return [m for m in self.modules.values() if m.learns]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.learned for p in (m.m_c, m.m_s) if p is not None]

    @contextlib.contextmanager
    def using(self, mode: str) -> Iterator[None]:
        """Evaluate the model as `mode` (see the module docstring) inside the block."""
        if mode not in MODES:
            raise ValueError(f"unknown ZipLoRA mode {mode!r}; valid: {', '.join(MODES)}")
        before = {k: m.mode for k, m in self.modules.items()}
        for m in self.modules.values():
            m.mode = mode
        try:
            yield
        finally:
            for k, m in self.modules.items():
                m.mode = before[k]

    def alignment(self) -> torch.Tensor:
        """Σ over merged layers of ``|cos(m_c, m_s)|`` (the paper's merger-similarity term)."""
        terms = [m.alignment() for m in self.learned]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def merged_factors(self) -> dict[str, LowRank]:
        return {k: m.merged_factors() for k, m in self.modules.items()}

    def mergers(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{key: (m_c, m_s)}`` of the learned modules, detached on the CPU."""
        return {m.key: (m.m_c.detach().cpu(), m.m_s.detach().cpu())  # type: ignore[union-attr]
                for m in self.learned}

    def remove(self) -> None:
        """Unhook everything: the bundle is the untouched base model again."""
        for m in self.modules.values():
            m.detach()
