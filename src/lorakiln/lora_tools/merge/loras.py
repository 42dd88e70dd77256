"""`lora merge` without a base model: several LoRAs into one kohya LoRA file.

Two ways to write the merged modules:

* **exact concatenation** (the default): a module's ranks add up. With ``sᵢ = alphaᵢ/rankᵢ``
  and strengths ``wᵢ``, ``up = [w₁·s₁·up₁ | w₂·s₂·up₂ | …]``, ``down = [down₁; down₂; …]`` and
  ``alpha = Σ rankᵢ`` (scale 1), so ``up @ down = Σ wᵢ·ΔWᵢ`` exactly: the merged file patches the
  model as all inputs hooked at their strengths do (kohya's ``alpha/rank`` scale). Modules found
  in one file only are kept. Only LoRA/LoCon factors can be stacked like this.
* **SVD** (``--rank`` / ``--dynamic``, kohya's ``svd_merge_lora.py``): each module's merged delta
  is truncated to the target rank and the kept share of ‖ΔW‖² is reported. For a plain sum of
  LoRA/LoCon modules the delta is the exact concatenation above, so it is truncated from its
  factors by `resize.resize_factors` (QR first: exact, and no SVD of the full matrix); TIES/DARE
  results and LoHa/LoKr/DoRA inputs are full deltas and go through `lowrank.factorize`. Unlike
  kohya we do not clamp the factors to a quantile, so a full-rank SVD merge is lossless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import KohyaLoRA, check_lora_output, write_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import LowRank, factorize
from lorakiln.lora_tools.lowrank.reduction import (
    ModuleReport,
    RankSpec,
    dims_metadata,
    is_kxk_conv,
    resolve_device,
)
from lorakiln.lora_tools.merge.checkpoint import load_base
from lorakiln.lora_tools.merge.inputs import (
    FileDeltas,
    LoraSpec,
    ModelDeltas,
    full_rank,
    read_inputs,
    resolve_shape,
    stackable,
)
from lorakiln.lora_tools.merge.options import (
    RECORD_KEY,
    DeltaSource,
    MergeOptions,
    MergeResult,
    merge_record,
    merged_delta,
)
from lorakiln.lora_tools.resize.resize import resize_factors
from lorakiln.networks.export import resolve_save_dtype

#: Source metadata that describes one training run's network or file, not the merged file:
#: dropped (`dims_metadata` and `kohya_file_metadata` write dim/alpha/args/module for the result).
_NOT_CARRIED = ("ss_network_module", "ss_network_args", "ss_network_dim", "ss_network_alpha", "ss_output_name",
                "ss_network_dropout", "ss_training_comment", "modelspec.title", "modelspec.hash_sha256",
                RECORD_KEY)


def _owners(loras: Sequence[KohyaLoRA]) -> dict[str, list[int]]:
    owners: dict[str, list[int]] = {}
    for index, lora in enumerate(loras):
        for key in lora.modules:
            owners.setdefault(key, []).append(index)
    return owners


def concat_module(
    key: str, loras: Sequence[KohyaLoRA], specs: Sequence[LoraSpec], indices: Sequence[int]
) -> LowRank | None:
    """Exact concatenation of module `key` of the inputs `indices` (None: all at strength 0)."""
    parts = []
    for index in indices:
        lora = loras[index]
        algo, tensors = lora.modules[key]
        if not stackable(algo, tensors):
            what = "a DoRA" if algo == "lora" else f"a {algo}"
            raise LorakilnError(
                f"{lora.path.name}: {key} is {what} module; its change is not a stack of LoRA factors, so it "
                "cannot be concatenated. Merge through SVD instead: add --rank N (or --dynamic METHOD "
                "--dynamic-param X)" + (", with --model BASE for DoRA" if algo == "lora" else "")
            )
        weight = specs[index].strength(key)
        if weight != 0:
            factors = lora.lora_factors(key)
            parts.append((lora.path.name, factors, weight * factors.alpha / factors.rank))
    if not parts:
        return None
    shape = resolve_shape(key, [(name, (f.up.shape[0], *f.down.shape[1:]), True) for name, f, _ in parts])
    tail = shape[1:]
    up = torch.cat([f.up.flatten(1) * scale for _, f, scale in parts], dim=1)
    down = torch.cat([f.down.reshape(f.rank, *tail) for _, f, _ in parts], dim=0)
    if len(tail) == 3:  # conv: up is a 1×1 conv [out, r, 1, 1] (kohya LoCon shapes)
        up = up[:, :, None, None]
    return LowRank(up.contiguous(), down.contiguous(), float(down.shape[0]), 1.0)


def concat_modules(loras: Sequence[KohyaLoRA], specs: Sequence[LoraSpec]) -> dict[str, LowRank]:
    """Exact concatenation of every module (module docstring)."""
    out = {}
    for key, indices in sorted(_owners(loras).items()):
        factors = concat_module(key, loras, specs, indices)
        if factors is not None:
            out[key] = factors
    return out


def _squared_norm(f: LowRank) -> float:
    """‖(alpha/rank)·up@down‖²_F from the factors: ``trace(upᵀup · down downᵀ)``, no full matrix."""
    up, down = f.up.flatten(1).double(), f.down.flatten(1).double()
    return float(((up.T @ up) * (down @ down.T)).sum()) * (f.alpha / f.rank) ** 2


def _svd_module(
    key: str, loras: Sequence[KohyaLoRA], specs: Sequence[LoraSpec], source: DeltaSource, options: MergeOptions,
    spec: RankSpec, device: torch.device,
) -> tuple[LowRank, ModuleReport, float] | None:
    """Module `key` truncated by `spec`: ``(factors, report, ‖merged ΔW‖²)``, or None if all at 0."""
    indices = source.owners[key]
    if options.method == "sum" and all(stackable(*loras[i].modules[key]) for i in indices):
        stacked = concat_module(key, loras, specs, indices)
        if stacked is None:
            return None
        kxk, before, norm2 = is_kxk_conv(stacked.down), stacked.rank, _squared_norm(stacked)
        factors = resize_factors(stacked, spec, device)
    else:
        delta = merged_delta(source, specs, key, options, device)
        if delta is None:
            return None
        kxk, before, norm2 = is_kxk_conv(delta), full_rank(tuple(delta.shape)), float(delta.double().pow(2).sum())
        method, value, cap = spec.for_module(kxk)
        f = factorize(delta, method, value, max_rank=cap)
        factors = LowRank(f.up.cpu(), f.down.cpu(), f.alpha, f.energy)
    return factors, ModuleReport(key, kxk, before, factors.rank, factors.alpha, factors.energy), norm2


def low_rank_modules(
    loras: Sequence[KohyaLoRA], specs: Sequence[LoraSpec], source: DeltaSource, options: MergeOptions,
) -> tuple[dict[str, LowRank], list[ModuleReport], float]:
    """SVD of every module's merged delta: ``(modules, reports, kept energy overall)``.

    The overall figure weighs each module's kept share by its ‖ΔW‖²: the share of the whole
    merged change that the written file still makes.
    """
    assert options.ranks is not None
    device = resolve_device(options.device)
    modules: dict[str, LowRank] = {}
    reports: list[ModuleReport] = []
    total = kept = 0.0
    with torch.no_grad():
        for key in tqdm(source.keys, desc="merge", unit="module", leave=False, disable=None):
            done = _svd_module(key, loras, specs, source, options, options.ranks, device)
            if done is None:
                continue
            modules[key], report, norm2 = done
            reports.append(report)
            total += norm2
            kept += report.energy * norm2
            if options.on_module is not None:
                options.on_module(report)
    return modules, reports, (kept / total if total > 0 else 1.0)


def _common_metadata(loras: Sequence[KohyaLoRA]) -> dict[str, str]:
    """The metadata every input agrees on (base model, resolution...), minus network specifics.

    One input's training record (tags, dataset folders) would describe the merged file wrongly,
    so only values shared by all inputs are carried (all of them for a single input).
    """
    common = dict(loras[0].metadata)
    for lora in loras[1:]:
        common = {k: v for k, v in common.items() if lora.metadata.get(k) == v}
    return {k: v for k, v in common.items() if k not in _NOT_CARRIED}


def _input_precision(loras: Sequence[KohyaLoRA]) -> torch.dtype:
    """The inputs' storage dtype when they share one, else fp32 (the default for a LoRA output)."""
    dtypes = {t.dtype for lora in loras for _, parts in lora.modules.values() for t in parts.values()
              if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def merge_to_lora(
    specs: Sequence[LoraSpec],
    output: str | os.PathLike[str],
    options: MergeOptions,
    model: str | os.PathLike[str] | None = None,
) -> MergeResult:
    """Merge the `specs` LoRAs into one LoRA at `output`; `model` only supplies module shapes."""
    options.check(to_lora=True)
    resolve_device(options.device)  # a bad --device fails before any file is read
    output = Path(output)
    inputs = [*(s.path for s in specs), model]
    check_lora_output(output, inputs, verb="lora merge", force=options.force)
    bundle = None
    if model is not None:
        bundle, loras = load_base(model, specs, options)
    else:
        loras = read_inputs(specs, options.family)
    source: ModelDeltas | None = None
    energy: float | None = None
    try:
        if bundle is not None:
            source = ModelDeltas(bundle, specs)  # resolves every key on the real model, shapes included
        if options.ranks is None:
            method = "concat"
            modules = concat_modules(loras, specs)
            reports = [ModuleReport(k, is_kxk_conv(f.down), f.rank, f.rank, f.alpha, 1.0) for k, f in modules.items()]
            for report in reports if options.on_module is not None else ():
                options.on_module(report)
        else:
            method = "svd" if options.method == "sum" else options.method
            modules, reports, energy = low_rank_modules(loras, specs, source or FileDeltas(loras), options)
    finally:
        if source is not None:
            source.close()
    if not modules:
        raise LorakilnError("nothing to merge: every input is at strength 0")
    ranks = None if options.ranks is None else options.ranks.describe()
    extra = dims_metadata(modules, None)
    extra["ss_output_name"] = output.stem
    extra["ss_training_comment"] = f"lorakiln lora merge ({method}): {', '.join(s.label() for s in specs)}"
    extra[RECORD_KEY] = merge_record(specs, loras, options, method, ranks=ranks, energy=energy)
    dtype = resolve_save_dtype(options.save_precision) or _input_precision(loras)
    write_kohya_lora(output, modules, loras[0].family, source_metadata=_common_metadata(loras),
                     extra_metadata=extra, dtype=dtype, force=options.force, inputs=inputs, verb="lora merge")
    return MergeResult(path=output, kind="lora", method=method, family=loras[0].family.name,
                       inputs=[s.label() for s in specs], modules=len(modules), reports=reports, energy=energy,
                       precision=str(dtype).removeprefix("torch."))
