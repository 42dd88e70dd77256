"""What `lora resize` and `lora extract` share: rank options, per-module reports, summaries, dims.

Both commands turn weight deltas into LoRA modules through `lowrank` and then tell the user
how much of each delta survived. The rank options mean what kohya's scripts mean
(``--new_rank``/``--dim``, ``--new_conv_rank``/``--conv_dim``, ``--dynamic_method``,
``--dynamic_param``), the report lines follow kohya's ``--verbose`` (share of the Frobenius norm
kept), and the ``ss_network_dim``/``ss_network_alpha``/``ss_network_args`` metadata describe
the written tensors the way kohya's trainer does: dim/alpha are the Linear (and 1×1 conv)
modules', ``conv_dim``/``conv_alpha`` in ``ss_network_args`` the k×k convs' (sd-scripts
``train_network.py`` metadata), and ``"Dynamic"`` stands for "differs per module" as kohya's resize writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.lowrank.lowrank import LowRank, RankMethod, choose_rank

#: kohya's ``--dynamic_method`` choices (``networks/resize_lora.py``).
DYNAMIC_METHODS: tuple[str, ...] = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class RankSpec:
    """How many singular values a module keeps.

    ``method`` is ``fixed`` or a dynamic method with its ``param``. ``rank`` is the fixed rank of
    Linear and 1×1 conv modules, or for a dynamic method the most they may keep (kohya: "--new_rank
    is used as a hard limit for max rank"); ``conv_rank`` the same for k×k convs. ``None`` caps
    nothing (a module then keeps at most the rank its delta has).
    """

    method: RankMethod
    param: float | None
    rank: int | None
    conv_rank: int | None

    def for_module(self, kxk_conv: bool) -> tuple[RankMethod, float, int | None]:
        """``(method, value, max_rank)`` arguments of `lowrank.choose_rank` for one module."""
        cap = self.conv_rank if kxk_conv else self.rank
        if self.method == "fixed":
            assert cap is not None, "a fixed RankSpec always has its ranks"
            return "fixed", float(cap), None
        assert self.param is not None
        return self.method, self.param, cap

    def describe(self) -> str:
        """``rank 4 (conv 2)`` / ``sv_fro 0.9, at most rank 16`` — for messages and metadata."""
        conv = f" (conv {self.conv_rank})" if self.conv_rank is not None and self.conv_rank != self.rank else ""
        if self.method == "fixed":
            return f"rank {self.rank}{conv}"
        cap = f", at most rank {self.rank}{conv}" if self.rank is not None else ""
        return f"{self.method} {self.param:g}{cap}"


def make_rank_spec(
    rank: int | None, conv_rank: int | None, dynamic: str | None, dynamic_param: float | None
) -> RankSpec:
    """Check the rank options together and return them; every mistake is a `LorakilnError`.

    `conv_rank` is already defaulted by the caller (resize: ``--rank``, as kohya's
    ``--new_conv_rank``; extract: none, as kohya's ``--conv_dim``).
    """
    for name, value in (("--rank", rank), ("--conv-rank", conv_rank)):
        if value is not None and value < 1:
            raise LorakilnError(f"{name} {value}: a rank is a positive whole number (e.g. {name} 8)")
    if dynamic is None:
        if dynamic_param is not None:
            raise LorakilnError(f"--dynamic-param {dynamic_param:g} needs --dynamic {'|'.join(DYNAMIC_METHODS)}")
        if rank is None:
            raise LorakilnError("give the new rank with --rank N, or a dynamic rule with --dynamic "
                                f"{'|'.join(DYNAMIC_METHODS)} --dynamic-param X")
        return RankSpec("fixed", None, rank, conv_rank)
    if dynamic not in DYNAMIC_METHODS:
        raise LorakilnError(f"--dynamic {dynamic!r}: unknown method; valid: {', '.join(DYNAMIC_METHODS)}")
    if dynamic_param is None:
        example = {"sv_ratio": "2", "sv_fro": "0.9", "sv_cumulative": "0.9"}[dynamic]
        raise LorakilnError(f"--dynamic {dynamic} needs --dynamic-param (e.g. --dynamic-param {example})")
    try:  # the value rules live in choose_rank; ask it once, before any file is read
        choose_rank(torch.ones(2), dynamic, dynamic_param)  # type: ignore[arg-type]
    except ValueError as err:
        raise LorakilnError(f"--dynamic-param {dynamic_param:g}: {err}") from None
    return RankSpec(dynamic, float(dynamic_param), rank, conv_rank)  # type: ignore[arg-type]


def is_kxk_conv(weight_or_down: torch.Tensor) -> bool:
    """A conv with a kernel larger than 1×1 (kohya gives these ``conv_dim``, others ``network_dim``)."""
    return weight_or_down.dim() == 4 and tuple(weight_or_down.shape[2:]) != (1, 1)


def resolve_device(device: str | None) -> torch.device:
    """``--device`` as a torch device; CPU when unset (kohya's scripts default to CPU too)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise LorakilnError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LorakilnError(f"--device {device}: no CUDA device is available here; leave --device out to use the CPU")
    if dev.type == "mps":  # the SVDs run in float64 (a full-rank resize is then lossless); MPS has none
        raise LorakilnError(f"--device {device}: MPS has no float64, which the SVD here needs; use the CPU "
                            "(leave --device out) or a CUDA GPU")
    return dev


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleReport:
    """What one module kept: ranks before → after, and the kept share of its delta.

    ``before`` is the module's old rank (resize) or the full rank a delta of its shape can have
    (extract). ``energy`` is the kept share of ‖ΔW‖²_F: the residual's share is exactly
    ``1 - energy``. ``fro`` is its square root, the "fro retained" kohya's resize prints.
    ``max_diff`` is the largest |ΔW| entry (extract only, compared with ``--min-diff``).
    """

    key: str
    kxk_conv: bool
    before: int
    after: int
    alpha: float
    energy: float
    max_diff: float | None = None

    @property
    def fro(self) -> float:
        return self.energy**0.5


def format_module(r: ModuleReport) -> str:
    """One ``--verbose`` line."""
    diff = f"  max|Δ| {r.max_diff:.3g}" if r.max_diff is not None else ""
    return (f"{r.key:<72} rank {r.before:>4} → {r.after:<4} alpha {r.alpha:<7g} "
            f"energy {r.energy:7.2%}  fro {r.fro:7.2%}{diff}")


def print_module(r: ModuleReport) -> None:
    """Print a `format_module` line without breaking a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(format_module(r))


def _ranks(values: Iterable[int]) -> str:
    found = sorted(set(values))
    if not found:
        return "—"
    return str(found[0]) if len(found) == 1 else f"{found[0]}–{found[-1]}"


def rank_line(reports: list[ModuleReport], with_before: bool = True) -> str:
    """``rank 16 → 4, 3×3 conv 8 → 4`` (ranges where modules differ)."""
    parts = []
    for label, group in (("rank", [r for r in reports if not r.kxk_conv]),
                         ("3×3 conv rank", [r for r in reports if r.kxk_conv])):
        if group:
            before = f"{_ranks(r.before for r in group)} → " if with_before else ""
            parts.append(f"{label} {before}{_ranks(r.after for r in group)}")
    return ", ".join(parts)


def energy_line(reports: list[ModuleReport]) -> str:
    """Mean and worst kept share, as energy (‖ΔW‖²) and as kohya's Frobenius-norm share."""
    if not reports:
        return "energy kept: —"
    worst = min(reports, key=lambda r: r.energy)
    mean_e = sum(r.energy for r in reports) / len(reports)
    mean_f = sum(r.fro for r in reports) / len(reports)
    return (f"energy kept (share of ‖ΔW‖²): mean {mean_e:.2%}, min {worst.energy:.2%} ({worst.key}); "
            f"Frobenius norm kept: mean {mean_f:.2%}, min {worst.fro:.2%}")


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


def _one_or_dynamic(values: Iterable[str]) -> str:
    found = set(values)
    return next(iter(found)) if len(found) == 1 else "Dynamic"


def dims_metadata(modules: dict[str, LowRank], network_args: str | None) -> dict[str, str]:
    """``ss_network_dim``/``ss_network_alpha`` of the Linear/1×1 modules and, when there are k×k
    convs, ``conv_dim``/``conv_alpha`` in ``ss_network_args`` — as kohya's trainer records LoCon. The source's other network args (e.g. LyCORIS ``algo``) are kept."""
    linear = [f for f in modules.values() if not is_kxk_conv(f.down)]
    convs = [f for f in modules.values() if is_kxk_conv(f.down)]
    main = linear or convs
    md = {
        "ss_network_dim": _one_or_dynamic(str(f.rank) for f in main),
        "ss_network_alpha": _one_or_dynamic(str(float(f.alpha)) for f in main),
    }
    try:
        args = json.loads(network_args) if network_args else {}
    except json.JSONDecodeError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    if convs:
        args["conv_dim"] = _one_or_dynamic(str(f.rank) for f in convs)
        args["conv_alpha"] = _one_or_dynamic(f"{f.alpha:g}" for f in convs)
    md["ss_network_args"] = json.dumps(args)
    return md


#: Called once per finished module (``--verbose`` prints it).
OnModule = Callable[[ModuleReport], None]
