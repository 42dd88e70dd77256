"""`lorakiln lora extract`: a LoRA that approximates the difference of a fine-tuned and a base model.

For every module lorakiln would train a LoRA on, ``ΔW = W_tuned − W_base`` is truncated by SVD
(`lowrank.factorize`) to ``--rank`` (or by kohya's dynamic rules), like kohya's
``networks/extract_lora_from_models.py``:

* the module set is the trainer's (`network.find_targets` with the family's target blocks, plus
  `adapters.locon_conv_targets` when ``--conv-rank`` is given: kohya's ``--conv_dim``), and the
  keys come from `keymap`, so an extracted file names modules exactly as a trained one;
* ``alpha = rank`` (scale 1), as kohya writes; Linear and 1×1 modules get ``--rank``, k×k convs
  ``--conv-rank`` (kohya ``create_modules``, `adapters.locon_rank`);
* ``--min-diff``: a text encoder whose largest |ΔW| entry is at most this is left out with a
  message (kohya: "Text encoder is same. Extract U-Net only."), and so is any single module
  whose delta is that small — an unchanged module would only add zeros to the file.

kohya also clamps the factors at their 99th percentile (``--clamp_quantile``); lorakiln does not,
because the even √σ split of `factorize` already keeps both factors at the same magnitude, and a
clamp would break "extract recovers a low-rank delta exactly".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import check_lora_output, write_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import LowRank, factorize
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
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.adapters import locon_conv_targets
from lorakiln.networks.network import find_targets

#: kohya's ``--min_diff`` default.
DEFAULT_MIN_DIFF = 0.01


@dataclass(frozen=True)
class ModulePair:
    """One target module in both models: its kohya key, part (``unet``/``text_encoder``/…), path."""

    key: str
    part: str
    path: str
    base: torch.Tensor
    tuned: torch.Tensor

    def delta(self, device: torch.device) -> torch.Tensor:
        """``W_tuned − W_base`` in fp32 on `device` (the weights may be half precision)."""
        return self.tuned.detach().to(device, torch.float32) - self.base.detach().to(device, torch.float32)


@dataclass
class ExtractResult:
    """What `extract_lora` wrote: per-module reports, what it skipped and why."""

    base: str
    tuned: str
    path: Path
    family: str
    spec: RankSpec
    reports: list[ModuleReport]
    skipped: dict[str, float]  # key → largest |ΔW| entry (≤ --min-diff)
    parts: dict[str, int]  # extracted modules per part
    min_diff: float
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _load(source: str, role: str, log: Callable[[str], None] | None) -> Any:
    from lorakiln.models.loading import load_base_model

    if Path(source).suffix == ".safetensors" and Path(source).is_file():
        from lorakiln.safetensors_check import read_layout

        read_layout(source)  # a truncated or damaged file: one clear error before the loader sees it
    if log is not None:
        log(f"loading {role} model {source}")
    return load_base_model(source)


def module_pairs(base: Any, tuned: Any, *, text_encoder: bool, unet: bool, convs: bool) -> Iterator[ModulePair]:
    """The trainer's LoRA targets (network.py module docstring) in both bundles, by kohya key.

    A module missing from `tuned`, or of another shape, means the two are not the same
    architecture: a `LorakilnError` names it.
    """
    family = base.family
    roots: list[tuple[str, Any, Any, list[tuple[str, Any]]]] = []
    if text_encoder:
        for index, (enc_b, enc_t) in enumerate(zip(base.text_encoders, tuned.text_encoders, strict=True)):
            targets = list(find_targets(enc_b, family.te_target_blocks, allow_conv=False))
            keys = [keymap.text_encoder_kohya_name(p, index, family) for p, _ in targets]
            roots.append((family.te_diffusers_prefixes[index], enc_t, keys, targets))
    if unet:
        targets = list(find_targets(base.unet, family.unet_target_blocks, allow_conv=True))
        if convs:
            targets += list(locon_conv_targets(base.unet))
        roots.append(("unet", tuned.unet, [keymap.unet_kohya_name(p, family) for p, _ in targets], targets))
    seen: set[str] = set()
    for part, tuned_root, keys, targets in roots:
        for key, (path, layer) in zip(keys, targets, strict=True):
            if key in seen:
                continue
            seen.add(key)
            try:
                other = tuned_root.get_submodule(path)
            except AttributeError:
                raise LorakilnError(f"the tuned model has no {part} module {path} ({key}); base and tuned "
                                    "must be the same architecture") from None
            if other.weight.shape != layer.weight.shape:
                raise LorakilnError(f"{key}: weight shape {tuple(layer.weight.shape)} in the base model but "
                                    f"{tuple(other.weight.shape)} in the tuned one; they are not the same "
                                    "architecture")
            yield ModulePair(key, part, path, layer.weight, other.weight)


def _skip_unchanged(
    pairs: list[ModulePair], max_diff: dict[str, float], min_diff: float, family: Any
) -> tuple[list[ModulePair], list[str]]:
    """Drop text encoders, then modules, whose largest |ΔW| is ≤ `min_diff` (kohya's rule, per part)."""
    notes = []
    drop_parts = set()
    for index, part in enumerate(family.te_diffusers_prefixes):
        values = [max_diff[p.key] for p in pairs if p.part == part]
        if values and max(values) <= min_diff:
            drop_parts.add(part)
            notes.append(f"text encoder {family.te_lora_prefixes[index]} ({part}) is the same in both models "
                         f"(largest |Δ| {max(values):.3g} ≤ --min-diff {min_diff:g}): left out")
    kept = [p for p in pairs if p.part not in drop_parts and max_diff[p.key] > min_diff]
    return kept, notes


def extract_lora(
    base: str | Path,
    tuned: str | Path,
    output: str | Path,
    *,
    rank: int | None = None,
    conv_rank: int | None = None,
    dynamic: str | None = None,
    dynamic_param: float | None = None,
    min_diff: float = DEFAULT_MIN_DIFF,
    text_encoder: bool = True,
    unet: bool = True,
    save_precision: str | None = None,
    device: str | None = None,
    force: bool = False,
    on_module: OnModule | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract ``tuned − base`` as a kohya LoRA at `output` (both models are only read).

    `conv_rank` None or 0 leaves the 3×3 convs out (kohya's ``--conv_dim`` unset). With a dynamic
    method, `rank`/`conv_rank` are the most a module may keep. `save_precision` None writes
    float32, as kohya's script does.
    """
    base, tuned, output = str(base), str(tuned), Path(output)
    conv_rank = conv_rank or None
    spec = make_rank_spec(rank, conv_rank, dynamic, dynamic_param)
    _check_inputs(base, tuned, output, min_diff=min_diff, parts=text_encoder or unet, force=force)
    dev = resolve_device(device)
    base_b, tuned_b = _load(base, "base", log), _load(tuned, "tuned", log)
    if base_b.family.name != tuned_b.family.name:
        raise LorakilnError(f"--base {base} is {base_b.family.name} but --tuned {tuned} is {tuned_b.family.name}; "
                            "extract needs two models of the same family")
    family = base_b.family
    with torch.no_grad():
        pairs = list(module_pairs(base_b, tuned_b, text_encoder=text_encoder, unet=unet,
                                  convs=conv_rank is not None))
        max_diff = {p.key: float(p.delta(dev).abs().max()) for p in pairs}
        kept, notes = _skip_unchanged(pairs, max_diff, min_diff, family)
        if not kept:
            raise LorakilnError(
                f"no module of {tuned} differs from {base} by more than --min-diff {min_diff:g} (largest |Δ| "
                f"{max(max_diff.values(), default=0.0):.3g}); are they the same model? A smaller --min-diff "
                "extracts smaller changes"
            )
        factors, reports = _factorize_all(kept, spec, dev, max_diff, on_module, progress)
    skipped = {p.key: max_diff[p.key] for p in pairs if p.key not in factors}
    notes += _light_tune_note(pairs, max_diff, skipped, min_diff)
    extra = dims_metadata(factors, None)
    extra["ss_training_comment"] = f"extracted by SVD from {Path(tuned).name} - {Path(base).name} ({spec.describe()})"
    extra["ss_sd_model_name"] = base_b.name  # the model the LoRA applies to, as a trained file says
    if base_b.sha256:
        extra["ss_new_sd_model_hash"] = base_b.sha256
    extra["lorakiln_extract"] = json.dumps({
        "base": Path(base).name, "tuned": Path(tuned).name, "base_sha256": base_b.sha256,
        "tuned_sha256": tuned_b.sha256, "method": spec.method, "param": spec.param, "rank": spec.rank,
        "conv_rank": spec.conv_rank, "min_diff": min_diff,
    })
    path = write_kohya_lora(output, factors, family, extra_metadata=extra, dtype=save_precision or "float",
                            force=force, inputs=[base, tuned], verb="lora extract")
    parts = dict(Counter(p.part for p in kept))
    return ExtractResult(base, tuned, path, family.name, spec, reports, skipped, parts, min_diff, notes)


def _check_inputs(base: str, tuned: str, output: Path, *, min_diff: float, parts: bool, force: bool) -> None:
    """The option and path mistakes, caught before minutes of loading and SVDs rather than after."""
    if min_diff < 0:
        raise LorakilnError(f"--min-diff {min_diff:g}: must be 0 or more (kohya's default is {DEFAULT_MIN_DIFF})")
    if not parts:
        raise LorakilnError("--no-text-encoder with --no-unet leaves nothing to extract")
    if Path(base).exists() and Path(tuned).exists() and Path(base).resolve() == Path(tuned).resolve():
        raise LorakilnError(f"--base and --tuned are the same model ({base}); the difference would be zero")
    check_lora_output(output, [base, tuned], verb="lora extract", force=force)  # write_kohya_lora's, early


def _light_tune_note(
    pairs: list[ModulePair], max_diff: dict[str, float], skipped: dict[str, float], min_diff: float
) -> list[str]:
    """kohya keeps every U-Net module; say so when --min-diff drops a sizeable share of the U-Net
    modules that did change (a light fine-tune's changes may all be small)."""
    changed = [p.key for p in pairs if p.part == "unet" and max_diff[p.key] > 0]
    small = [k for k in changed if k in skipped]
    if not changed or len(small) <= len(changed) // 4:
        return []
    return [f"{len(small)} of the {len(changed)} U-Net modules that changed did so by at most --min-diff "
            f"{min_diff:g} and were left out; for a light fine-tune try a smaller --min-diff (e.g. 0.001)"]


def _factorize_all(
    pairs: list[ModulePair], spec: RankSpec, device: torch.device, max_diff: dict[str, float],
    on_module: OnModule | None, progress: bool,
) -> tuple[dict[str, LowRank], list[ModuleReport]]:
    """SVD-truncate each pair's delta; alpha = rank (scale 1), as kohya's extract writes."""
    factors: dict[str, LowRank] = {}
    reports: list[ModuleReport] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="extract", unit="module", leave=False)
    for pair in pairs:
        delta = pair.delta(device)
        kxk = is_kxk_conv(delta)
        method, value, cap = spec.for_module(kxk)
        f = factorize(delta, method, value, max_rank=cap)
        f = LowRank(f.up.cpu(), f.down.cpu(), f.alpha, f.energy)
        factors[pair.key] = f
        full = min(delta.shape[0], delta[0].numel())
        report = ModuleReport(pair.key, kxk, full, f.rank, f.alpha, f.energy, max_diff[pair.key])
        reports.append(report)
        if bar is not None:
            bar.update()
        if on_module is not None:
            on_module(report)
    if bar is not None:
        bar.close()
    return factors, reports


def describe_extract(result: ExtractResult) -> str:
    """The summary `lorakiln lora extract` prints."""
    from lorakiln.lora_tools.files.info import human_size

    r = result.reports
    parts = ", ".join(f"{part} {n}" for part, n in result.parts.items())
    lines = [
        f"wrote {result.path} (kohya format, {result.family}, {len(r)} modules: {parts}; {result.spec.describe()})",
        f"  {rank_line(r, with_before=False)}",
        f"  {energy_line(r)}",
    ]
    if result.skipped:
        same = sum(d == 0 for d in result.skipped.values())
        lines.append(f"  skipped {len(result.skipped)} module(s) whose largest |Δ| ≤ --min-diff {result.min_diff:g} "
                     f"({same} identical in both models)")
    lines.append(f"  size: {human_size(result.size)}")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
