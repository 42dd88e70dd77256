"""`lorakiln lora info`: what a LoRA file is, what it patches, and how it was trained.

The file is read from its safetensors header (shapes, dtypes, metadata) plus the few bytes of
each ``alpha``, so inspecting a 1 GB file costs no more than a 10 MB one and loads no tensors.
`header` reads the header, `modules` groups the keys and tells the layout;
`metadata_view` makes the metadata readable; this module builds the report
(`LoraInfo`), its portability notes and its text form.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.header import DTYPE_NAMES, SafetensorsHeader, read_header
from lorakiln.lora_tools.files.metadata_view import (
    TriggerWords,
    base_model_summary,
    dataset_dirs,
    decode_value,
    file_hashes,
    modelspec_summary,
    training_summary,
    trigger_words,
)
from lorakiln.lora_tools.files.modules import (
    ALGORITHM_NAMES,
    BlockSummary,
    ModuleEntry,
    describe_non_lora,
    detect_format,
    group_modules,
    read_alphas,
    resolve_modules,
    summarise_blocks,
)
from lorakiln.models.family import FAMILIES
from lorakiln.networks.clients import FORMAT_CLIENTS  # shared with the trainer's end-of-run advice
from lorakiln.networks.file_checks import check_rank_layout
from lorakiln.networks.file_family import detect_family
from lorakiln.networks.targets import PRESET_HELP, preset_of
from lorakiln.safetensors_check import scan_non_finite

__all__ = ["FORMAT_CLIENTS", "FORMAT_LABELS", "LoraInfo", "format_info", "human_size", "inspect_lora"]

# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------

FORMAT_LABELS = {
    "kohya": "kohya LoRA (lora_down / lora_up / alpha)",
    "lycoris": "LyCORIS (kohya-style prefixes)",
    "diffusers": "diffusers / PEFT (lora_A / lora_B)",
    "diffusers-old": "diffusers, old naming (lora.down / lora_linear_layer / *_lora.down)",
    "mixed": "mixed kohya and diffusers keys",
}


@dataclass
class LoraInfo:
    """Everything `lora info` reports; `to_dict` is the ``--json`` form."""

    path: str
    file_size: int
    format: str
    family: str | None
    family_reason: str
    tensors: int
    parameters: int
    dtypes: dict[str, int]
    algorithms: dict[str, int]
    dora_modules: int
    #: The `network.target_modules` preset whose layer kinds cover the file's (or "custom").
    targets: str
    blocks: list[BlockSummary]
    modules: list[dict[str, Any]]
    training: dict[str, str]
    datasets: list[dict[str, Any]]
    base_model: dict[str, str]
    modelspec: dict[str, str]
    trigger_words: list[TriggerWords]
    hashes: dict[str, Any]
    metadata: dict[str, Any]
    notes: list[str]

    @property
    def format_label(self) -> str:
        return FORMAT_LABELS[self.format]

    def to_dict(self, with_modules: bool = False) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format_label"] = self.format_label
        out["loads_in"] = FORMAT_CLIENTS[self.format]
        out["trigger_words"] = [
            {"folder": t.folder, "images": t.images, "tags": [{"tag": g, "images": n} for g, n in t.tags]}
            for t in self.trigger_words
        ]
        if not with_modules:
            del out["modules"]
        return out


def inspect_lora(path: str | Path, *, verify_hash: bool = True) -> LoraInfo:
    """Read `path` and describe it; `LorakilnError` when it is not a LoRA (saying what it is)."""
    header = read_header(path)
    modules, bundled, foreign = group_modules(list(header.tensors))
    if not modules:
        raise LorakilnError(f"{header.path.name} has no LoRA keys: it looks like {describe_non_lora(header)}")
    check_rank_layout(header.path, {name: t.shape for name, t in header.tensors.items()})
    if verify_hash:  # the tensor data is read for the hash anyway: refuse NaN/inf as every other verb does
        scan_non_finite(header.path)
    fmt = detect_format(modules)
    family, reason, notes = detect_family(modules, header.metadata)
    resolve_modules(modules, family)
    alphas = read_alphas(header, modules)
    blocks, rows, algos = summarise_blocks(header, modules, family, alphas)
    notes += _compat_notes(fmt, family, modules, alphas, bundled, foreign)
    notes += _dora_notes(header, modules)
    md = header.metadata
    hashes = file_hashes(header, verify_hash, notes)
    return LoraInfo(
        path=str(header.path),
        file_size=header.file_size,
        format=fmt,
        family=family,
        family_reason=reason,
        tensors=len(header.tensors),
        parameters=sum(t.numel for t in header.tensors.values()),
        dtypes=dict(
            Counter(DTYPE_NAMES.get(t.dtype, t.dtype) for t in header.tensors.values()).most_common()
        ),
        algorithms=dict(algos.most_common()),
        dora_modules=sum(m.dora for m in modules.values()),
        targets=preset_of(m.path or m.key for m in modules.values()),
        blocks=blocks,
        modules=rows,
        training=training_summary(md),
        datasets=dataset_dirs(md),
        base_model=base_model_summary(md),
        modelspec=modelspec_summary(md),
        trigger_words=trigger_words(md),
        hashes=hashes,
        metadata={k: decode_value(v) for k, v in md.items()},
        notes=notes,
    )


def _compat_notes(
    fmt: str,
    family: str | None,
    modules: dict[str, ModuleEntry],
    alphas: dict[str, float],
    bundled: list[str],
    foreign: list[str],
) -> list[str]:
    """Portability problems of the file in the big clients' loaders, as one-line notes."""
    notes: list[str] = []
    if family is None:
        notes.append(
            "base model family unknown (no metadata, no decisive key names); "
            "`lora convert` needs --family sd1|sdxl"
        )
    elif family == "sd2":
        notes.append("SD 2.x LoRA: lorakiln trains and converts SD 1.x and SDXL only")
    kohya = [m for m in modules.values() if m.style == "kohya"]
    if fmt == "kohya":
        missing = sum(1 for m in kohya if m.key not in alphas)
        if missing:
            notes.append(f"{missing} module(s) have no .alpha: every client applies them at scale 1")
    if family in ("sd1", "sd2") and any(
        m.key.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block"))
        for m in kohya
    ):
        notes.append(
            "SD 1.x file with LDM-style U-Net names (input_blocks…): A1111/ComfyUI load it, diffusers "
            "maps it to the wrong modules"
        )
    if any(re.match(r"lora_te[12]?_encoder_layers_", m.key) for m in kohya):
        notes.append(
            "text-encoder keys lack `text_model_` (transformers ≥ 5.6 naming): A1111 and ComfyUI "
            "skip them silently"
        )
    unresolved = [m.key for m in modules.values() if m.path is None and family in FAMILIES]
    if unresolved:
        notes.append(f"{len(unresolved)} module key(s) name no {family} module (e.g. {unresolved[0]})")
    notes += _te_attention_notes(modules)
    if bundled:
        names = sorted({k.split(".")[1] for k in bundled if k.count(".") >= 1})
        notes.append(
            f"bundled embedding(s) {', '.join(names)} (bundle_emb.*): A1111 only; diffusers refuses the file"
        )
    if foreign:
        notes.append(
            f"{len(foreign)} key(s) are neither LoRA nor embedding (e.g. {foreign[0]}); clients ignore "
            "or reject them"
        )
    return notes


def _dora_axis(shape: tuple[int, ...]) -> str:
    """``input`` for ``[1, in(, 1, 1)]``, ``output`` for ``[out, 1(, 1, 1)]`` (LyCORIS layouts)."""
    if len(shape) >= 2 and shape[0] == 1 and shape[1] > 1 and all(d == 1 for d in shape[2:]):
        return "input"
    if len(shape) >= 1 and shape[0] > 1 and all(d == 1 for d in shape[1:]):
        return "output"
    return "unknown"


def _dora_notes(header: SafetensorsHeader, modules: dict[str, ModuleEntry]) -> list[str]:
    """DoRA portability (the clients' DoRA axis rules; diffusers' ``lora_state_dict``; `lorakiln.networks.dora`).

    Kohya-style ``dora_scale``: diffusers drops it with a warning, so there the file is a plain
    LoRA. Its axis decides whether A1111 and ComfyUI agree: per input column (``[1, in]``) they
    compute the same weight; per output row (``[out, 1]``, LyCORIS's default) A1111 still
    normalises per input column and ComfyUI divides by the base weight's norm — two different
    results. PEFT's ``lora_magnitude_vector`` is read by diffusers/PEFT only.
    """
    notes: list[str] = []
    kohya = [m for m in modules.values() if m.dora and m.style == "kohya"]
    peft = sum(1 for m in modules.values() if m.dora and m.style != "kohya")
    if kohya:
        axes = Counter(_dora_axis(header.tensors[m.tensors["dora"]].shape) for m in kohya)
        text = (f"{len(kohya)} module(s) carry DoRA magnitudes (dora_scale): diffusers drops them with a "
                "warning and applies a plain LoRA")
        if axes["input"]:
            text += f"; {axes['input']} per input channel ([1, in]): AUTOMATIC1111 and ComfyUI apply those alike"
        if axes["output"]:
            text += (f"; {axes['output']} per output channel ([out, 1], LyCORIS wd_on_output): AUTOMATIC1111 "
                     "and ComfyUI each compute a different weight from those — not portable")
        if axes["unknown"]:
            text += f"; {axes['unknown']} of a shape no client reads as DoRA"
        notes.append(text)
    if peft:
        notes.append(f"{peft} module(s) carry PEFT DoRA magnitudes (lora_magnitude_vector): diffusers/PEFT "
                     "apply them; AUTOMATIC1111 and ComfyUI read only dora_scale")
    return notes


def _te_attention_notes(modules: dict[str, ModuleEntry]) -> list[str]:
    """Text-encoder attention must come as q, k, v and out_proj together (A1111, diffusers)."""
    layers: dict[str, set[str]] = {}
    for m in modules.values():
        if m.component in (None, "unet") or m.path is None:
            continue
        hit = re.match(r"(.*self_attn)\.(q|k|v|out)_proj$", m.path)
        if hit:
            layers.setdefault(f"{m.component}.{hit[1]}", set()).add(hit[2])
    partial = sorted(k for k, v in layers.items() if v != {"q", "k", "v", "out"})
    if not partial:
        return []
    return [
        f"{len(partial)} text-encoder attention layer(s) lack some of q/k/v/out_proj (e.g. {partial[0]}): "
        "diffusers drops q/k/v without out_proj, A1111 skips SDXL TE2 attention"
    ]


# --------------------------------------------------------------------------------------------
# text rendering
# --------------------------------------------------------------------------------------------


def human_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable


def _human_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _values(values: list[float] | list[int]) -> str:
    if not values:
        return "—"
    if len(values) <= 3:
        return ", ".join(_fmt_num(v) for v in values)
    return f"{_fmt_num(values[0])}–{_fmt_num(values[-1])}"


def format_info(info: LoraInfo, with_modules: bool = False) -> str:
    """The human-readable report."""
    lines: list[str] = []
    dtypes = ", ".join(f"{d} ({n})" if len(info.dtypes) > 1 else d for d, n in info.dtypes.items())
    lines.append(
        f"File        {Path(info.path).name} ({human_size(info.file_size)}, {info.tensors} tensors, "
        f"{_human_count(info.parameters)} parameters, {dtypes})"
    )
    algos = ", ".join(
        f"{ALGORITHM_NAMES.get(a, a)} {n}" if len(info.algorithms) > 1 else ALGORITHM_NAMES.get(a, a)
        for a, n in info.algorithms.items()
    )
    dora = f", DoRA on {info.dora_modules}" if info.dora_modules else ""
    lines.append(f"Format      {info.format_label}; modules: {algos}{dora}")
    lines.append(f"Loads in    {FORMAT_CLIENTS[info.format]}")
    family = {"sd1": "SD 1.x", "sdxl": "SDXL", "sd2": "SD 2.x"}.get(info.family or "", "unknown")
    lines.append(f"Base model  {family}" + (f" ({info.family_reason})" if info.family_reason else ""))
    total = sum(b.modules for b in info.blocks)
    ranks = sorted({r for b in info.blocks for r in b.ranks})
    alphas = sorted({a for b in info.blocks for a in b.alphas})
    scales = sorted({s for b in info.blocks for s in b.scales})
    lines.append(
        f"Modules     {total}; rank {_values(ranks)}, alpha {_values(alphas) if alphas else 'none (= rank)'}, "
        f"scale alpha/rank {_values(scales)}"
    )
    lines.append(f"Targets     {info.targets}" + (f" ({PRESET_HELP[info.targets]})" if info.targets in PRESET_HELP
                                                    else " (layers outside lorakiln's presets)"))
    lines.append("")
    width = max(len(b.name) for b in info.blocks) + 2
    lines.append(f"  {'block':<{width}}{'modules':>7}  {'rank':>7}  {'alpha':>7}  {'scale':>7}")
    for b in info.blocks:
        lines.append(
            f"  {b.name:<{width}}{b.modules:>7}  {_values(b.ranks):>7}  {_values(b.alphas):>7}  "
            f"{_values(b.scales):>7}"
        )
    if with_modules:
        lines.append("")
        for row in info.modules:
            lines.append(f"  {row['key']}  rank {row['rank']} alpha {row['alpha']} → {row['module'] or '?'}")
    _section(lines, "Training", info.training)
    if info.datasets:
        lines += ["", "Dataset"]
        for d in info.datasets:
            lines.append(
                f"  {d['folder']}: {d['images'] if d['images'] is not None else '?'} images × "
                f"{d['repeats'] if d['repeats'] is not None else '?'} repeats"
            )
    _section(lines, "Trained on", info.base_model)
    _section(lines, "ModelSpec", {k.removeprefix("modelspec."): v for k, v in info.modelspec.items()})
    if info.trigger_words:
        lines += ["", "Likely trigger words (from ss_tag_frequency)"]
        for t in info.trigger_words:
            lines.append(f"  {t.folder}: {', '.join(t.describe())}")
    hashes = {k: v for k, v in info.hashes.items() if k.startswith("sshs_") and isinstance(v, str)}
    if "sshs_model_hash_matches" in info.hashes:
        ok = info.hashes["sshs_model_hash_matches"]
        hashes["sshs_model_hash"] += (
            " (matches the tensor data)" if ok else " (DOES NOT match the tensor data)"
        )
    elif "tensor_data_sha256" in info.hashes:
        hashes["tensor data sha256"] = info.hashes["tensor_data_sha256"]
    _section(lines, "Hashes", hashes)
    if info.notes:
        lines += ["", "Notes"] + [f"  - {n}" for n in info.notes]
    return "\n".join(lines)


def _section(lines: list[str], title: str, values: dict[str, str]) -> None:
    if not values:
        return
    lines += ["", title]
    width = max(len(k) for k in values) + 2
    lines += [f"  {k:<{width}}{v}" for k, v in values.items()]
