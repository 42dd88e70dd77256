"""`lorakiln lora resize`: lower the rank of a kohya LoRA/LoCon file by SVD.

Each module's applied delta ``ΔW = (alpha/r) · up @ down`` (kohya) is truncated to the
new rank, which is fixed (``--rank``) or chosen per module by kohya's dynamic rules
(``sv_ratio``/``sv_fro``/``sv_cumulative``, `lowrank.choose_rank`) and capped by ``--rank`` /
``--conv-rank``, as in kohya's ``networks/resize_lora.py``. As there, the module's scale
``alpha/r`` is kept, so the new alpha is ``old scale × new rank`` and a user's strength
settings keep their meaning.

**Why QR first.** ΔW has rank ≤ r, so instead of an SVD of the full ``[out, in·kh·kw]`` matrix
(what kohya does, and the slow part for SDXL's 1280×5120 layers) we write ``up = Q_u R_u`` and
``downᵀ = Q_d R_d``; then ``ΔW = Q_u · (scale · R_u R_dᵀ) · Q_dᵀ`` with orthonormal ``Q``s,
and the r×r core has exactly ΔW's non-zero singular values. The core goes through the shared
`lowrank.factorize` (same rank rules, same even split of σ between up and down) and the
factors are rotated back. Exact, and it costs ``O((out + in) r²)`` per module.

Only plain LoRA/LoCon modules have an ``up @ down`` to truncate. LoHa (Hadamard product) and
LoKr (Kronecker product) modules are refused with their key; kohya's script does not resize
them either (it only looks at ``lora_down`` keys and copies everything else as it is). DoRA
modules are refused too: their weight is renormalised by the base weight's norm, so a truncated
ΔW with the old ``dora_scale`` would be another function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import KohyaLoRA, check_lora_output, read_kohya_lora, write_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import LowRank, choose_rank, factorize
from lorakiln.lora_tools.lowrank.reduction import (
    ModuleReport,
    OnModule,
    RankSpec,
    dims_metadata,
    energy_line,
    is_kxk_conv,
    make_rank_spec,
    rank_line,
    resolve_device,
)

_ALGO_NAMES = {"loha": "LoHa (hada_*)", "lokr": "LoKr (lokr_*)"}
#: The tensors of a plain kohya LoRA/LoCon module.
_LORA_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})


@dataclass
class ResizeResult:
    """What `resize_lora` wrote, and what each module kept."""

    source: Path
    path: Path
    family: str
    spec: RankSpec
    reports: list[ModuleReport]
    size_before: int
    size_after: int
    notes: list[str] = field(default_factory=list)


def resize_factors(old: LowRank, spec: RankSpec, device: torch.device | None = None) -> LowRank:
    """`old`'s applied delta truncated by `spec`, with ``alpha = old scale × new rank`` (kohya).

    The returned ``energy`` is the kept share of ‖ΔW‖²_F. Factors come back as fp32 on the CPU.
    """
    device = device or torch.device("cpu")
    method, value, cap = spec.for_module(is_kxk_conv(old.down))
    scale = old.alpha / old.rank
    up = old.up.flatten(1).to(device, torch.float64)  # [out, r]
    down = old.down.flatten(1).to(device, torch.float64)  # [r, in·kh·kw]
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    core = (r_up @ r_down.T) * scale  # ΔW = q_up @ core @ q_downᵀ
    rank = choose_rank(torch.linalg.svdvals(core), method, value, cap)
    # |scale|: a (rare) negative alpha's sign is already in `core`, and factorize needs alpha > 0
    small = factorize(core, "fixed", rank, alpha=abs(scale) * rank)
    new_up = (q_up @ small.up.to(q_up)).float().cpu()
    new_down = (small.down.to(q_down) @ q_down.T).float().cpu().reshape(rank, *old.down.shape[1:])
    if old.down.dim() == 4:
        new_up = new_up[:, :, None, None]  # a 1×1 conv after the k×k down (kohya LoCon shapes)
    return LowRank(new_up.contiguous(), new_down.contiguous(), small.alpha, small.energy)


def _check_kohya_file(source: Path) -> None:
    """Say what a file is when it is no kohya LoRA (a pickle, an embedding, a diffusers LoRA),
    from its header alone, as `lora info` does; diffusers files get the command that converts them."""
    from lorakiln.lora_tools.files.header import read_header
    from lorakiln.lora_tools.files.modules import describe_non_lora, detect_format, group_modules

    header = read_header(source)
    modules, _, _ = group_modules(list(header.tensors))
    if not modules:
        raise LorakilnError(f"{source.name} has no LoRA keys: it looks like {describe_non_lora(header)}")
    if detect_format(modules) in ("diffusers", "diffusers-old", "mixed"):
        raise LorakilnError(f"{source.name} is a diffusers-format LoRA; `lora resize` reads kohya files. Convert it "
                            f"first: lorakiln lora convert {source} {source.stem}_kohya.safetensors --to kohya")


def _refuse_non_lora(lora: KohyaLoRA) -> None:
    """Refuse, naming the first one, modules whose applied weight is not ``W + scale · up @ down``."""
    others = [(key, algo, set(parts) - _LORA_PARTS) for key, (algo, parts) in lora.modules.items()
              if algo != "lora" or set(parts) - _LORA_PARTS]
    if not others:
        return
    key, algo, extra = others[0]
    more = f" (and {len(others) - 1} more such modules)" if len(others) > 1 else ""
    if algo in _ALGO_NAMES:
        raise LorakilnError(
            f"{lora.path.name}: module {key} is {_ALGO_NAMES[algo]}{more}; `lora resize` reduces LoRA/LoCon "
            "modules (lora_down/lora_up) only: a Hadamard or Kronecker product has no up @ down to truncate "
            "(kohya's resize_lora.py does not resize such modules either)"
        )
    what = "DoRA (dora_scale)" if "dora_scale" in extra else f"a LoRA module with {', '.join(sorted(extra))}"
    raise LorakilnError(
        f"{lora.path.name}: module {key} is {what}{more}; `lora resize` reduces plain LoRA/LoCon modules only "
        "(DoRA rescales W + ΔW by the base weight's norm, so truncating ΔW alone would change it unpredictably)"
    )


def _input_dtype(lora: KohyaLoRA) -> torch.dtype:
    """The precision of the input's factors: the default output precision (a fp16 file stays fp16)."""
    for _, parts in lora.modules.values():
        return parts["lora_down.weight"].dtype
    return torch.float32


def _comment(lora: KohyaLoRA, spec: RankSpec, old_dim: int) -> str:
    """kohya's ``ss_training_comment`` record, before the source's own comment."""
    if spec.method == "fixed":
        conv = f" (conv: {spec.conv_rank})" if spec.conv_rank != spec.rank else ""
        text = f"dimension is resized from {old_dim} to {spec.rank}{conv}"
    else:
        text = f"Dynamic resize with {spec.method}: {spec.param:g} from {old_dim}"
    previous = lora.metadata.get("ss_training_comment", "")
    return f"{text}; {previous}" if previous and previous != "None" else text


def resize_lora(
    source: str | Path,
    output: str | Path,
    *,
    rank: int | None = None,
    conv_rank: int | None = None,
    dynamic: str | None = None,
    dynamic_param: float | None = None,
    save_precision: str | None = None,
    device: str | None = None,
    force: bool = False,
    on_module: OnModule | None = None,
    progress: bool = False,
) -> ResizeResult:
    """Resize the LoRA in `source` and write it to `output` (never over `source`).

    `conv_rank` defaults to `rank` (kohya's ``--new_conv_rank``). `save_precision` None keeps
    the input's precision. `on_module` gets each module's report as it is done.
    """
    source = Path(source)
    spec = make_rank_spec(rank, conv_rank if conv_rank is not None else rank, dynamic, dynamic_param)
    dev = resolve_device(device)
    check_lora_output(output, [source], verb="lora resize", force=force)  # before any SVD
    _check_kohya_file(source)
    lora = read_kohya_lora(source)
    _refuse_non_lora(lora)
    factors: dict[str, LowRank] = {}
    reports: list[ModuleReport] = []
    keys = list(lora.modules)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), desc="resize", unit="module", leave=False)
    with torch.no_grad():
        for key in keys:
            old = lora.lora_factors(key)
            new = resize_factors(old, spec, dev)
            factors[key] = new
            report = ModuleReport(key, is_kxk_conv(old.down), old.rank, new.rank, new.alpha, new.energy)
            reports.append(report)
            if bar is not None:
                bar.update()
            if on_module is not None:
                on_module(report)
    if bar is not None:
        bar.close()
    old_dim = max(r.before for r in reports)
    extra = dims_metadata(factors, lora.metadata.get("ss_network_args"))
    extra["ss_training_comment"] = _comment(lora, spec, old_dim)
    extra["lorakiln_resize"] = json.dumps({
        "source": source.name, "source_sshs_model_hash": lora.metadata.get("sshs_model_hash"),
        "method": spec.method, "param": spec.param, "rank": spec.rank, "conv_rank": spec.conv_rank,
        "from_rank": old_dim,
    })
    path = write_kohya_lora(output, factors, lora.family, source_metadata=lora.metadata, extra_metadata=extra,
                            dtype=save_precision or _input_dtype(lora), force=force, inputs=[source],
                            verb="lora resize")
    notes = []
    kept = [r for r in reports if spec.method == "fixed" and spec.for_module(r.kxk_conv)[1] > r.before]
    if kept:
        notes.append(f"{len(kept)} module(s) already had a rank at or below the requested one and keep it "
                     "(resizing never adds rank)")
    return ResizeResult(source, path, lora.family.name, spec, reports, source.stat().st_size,
                        path.stat().st_size, notes)


def describe_resize(result: ResizeResult) -> str:
    """The summary `lorakiln lora resize` prints."""
    from lorakiln.lora_tools.files.info import human_size

    r = result.reports
    share = result.size_after / result.size_before if result.size_before else 0.0
    lines = [
        f"wrote {result.path} (kohya format, {result.family}, {len(r)} modules; {result.spec.describe()})",
        f"  {rank_line(r)}",
        f"  {energy_line(r)}",
        f"  size: {human_size(result.size_before)} → {human_size(result.size_after)} ({share:.0%})",
    ]
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
