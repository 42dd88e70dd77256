"""`lorakiln lora convert`: kohya ⇄ diffusers/PEFT LoRA files, SD 1.x and SDXL.

The invariant is the delta each module adds, ``ΔW = scale · up @ down`` (as kohya sd-scripts
writes it and ComfyUI's ``comfy/lora.py`` applies it):

* kohya → diffusers folds ``scale = alpha/rank`` into ``lora_B`` exactly as `save_diffusers_lora`
  does, because diffusers (and ComfyUI/A1111 for ``lora_A/lora_B`` keys) reads a file without
  alphas as scale 1 (diffusers ``get_peft_kwargs``);
* diffusers → kohya writes ``alpha = rank`` (scale 1), so ``lora_down``/``lora_up`` are the
  diffusers tensors unchanged — bit for bit — unless the diffusers file itself declared another
  scale (``lora_adapter_metadata``), which is then folded into ``lora_up``.

A kohya file whose alpha equals its rank therefore survives kohya → diffusers → kohya bit for bit;
any other alpha survives as the same ΔW (exactly when alpha/rank is a power of two). Names go
through `lorakiln.models.names.kohya` only. LyCORIS modules (LoHa, LoKr, Tucker, DoRA, bias) have
no diffusers LoRA equivalent and are refused rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save

from lorakiln.errors import LorakilnError
from lorakiln.io_guard import check_output, write_output
from lorakiln.lora_tools.files.header import read_header, resolve_input
from lorakiln.lora_tools.files.lorafile import kohya_file_metadata
from lorakiln.lora_tools.files.modules import (
    ALGORITHM_NAMES,
    ModuleEntry,
    describe_non_lora,
    group_modules,
    peft_alpha_rule,
    split_component,
)
from lorakiln.models.family import FAMILIES, ModelFamily
from lorakiln.models.names import kohya as keymap
from lorakiln.networks.export import DIFFUSERS_WEIGHT_NAME
from lorakiln.networks.file_checks import read_lora_checked
from lorakiln.networks.file_family import detect_family, family_from_keys

Target = Literal["kohya", "diffusers"]
TARGETS: tuple[str, ...] = ("kohya", "diffusers")


@dataclass
class ConvertResult:
    """What `convert_lora` wrote."""

    source: Path
    path: Path
    source_format: str
    target: str
    family: str
    modules: int
    notes: list[str] = field(default_factory=list)


def _scaled(up: torch.Tensor, scale: float) -> torch.Tensor:
    """``up · scale`` computed in float32 and stored in up's dtype (like `diffusers_state_dict`);
    scale 1 returns the tensor untouched so alpha == rank files stay bit-exact."""
    if scale == 1.0:
        return up.contiguous()
    return (up.to(torch.float32) * scale).to(up.dtype).contiguous()


def _only_lora(entry: ModuleEntry, source: Path) -> None:
    """Refuse modules a plain LoRA cannot express (diffusers raises on or drops them)."""
    extra = set(entry.tensors) - {"down", "up", "alpha"}
    if entry.algorithm == "lora" and not extra and {"down", "up"} <= set(entry.tensors):
        return
    what = ALGORITHM_NAMES.get(entry.algorithm, entry.algorithm)
    if "dora" in extra:
        what = "DoRA (dora_scale / lora_magnitude_vector)"
    elif "mid" in extra:
        what = "Tucker LoRA (lora_mid)"
    elif extra & {"down_bias", "up_bias"}:
        what = "LoRA with bias"
    elif entry.algorithm == "lora":
        what = f"a LoRA module with tensors {', '.join(sorted(entry.tensors))} (not down + up + alpha)"
    raise LorakilnError(
        f"{source.name}: module {entry.key} is {what}, which plain kohya/diffusers LoRA files cannot hold "
        "(diffusers rejects or drops it); lorakiln converts plain LoRA modules only"
    )


def kohya_to_diffusers(
    tensors: dict[str, torch.Tensor], modules: dict[str, ModuleEntry], family: ModelFamily, source: Path
) -> dict[str, torch.Tensor]:
    """PEFT tensors ``<component>.<path>.lora_A/B.weight`` with alpha/rank folded into lora_B."""
    out: dict[str, torch.Tensor] = {}
    for entry in modules.values():
        _only_lora(entry, source)
        try:
            component, path = keymap.resolve_kohya_module(entry.key, family)
        except KeyError as err:
            raise LorakilnError(f"{source.name}: {err.args[0]}; is --family right?") from None
        down, up = tensors[entry.tensors["down"]], tensors[entry.tensors["up"]]
        rank = down.shape[0]
        alpha = float(tensors[entry.tensors["alpha"]]) if "alpha" in entry.tensors else float(rank)  # kohya rule
        name = f"{component}.{path}"
        if f"{name}.lora_A.weight" in out:
            raise LorakilnError(f"{source.name}: two keys map to the diffusers module {name}")
        out[f"{name}.lora_A.weight"] = down.contiguous()
        out[f"{name}.lora_B.weight"] = _scaled(up, alpha / rank)
    return out


def diffusers_to_kohya(
    tensors: dict[str, torch.Tensor],
    modules: dict[str, ModuleEntry],
    metadata: dict[str, str],
    family: ModelFamily,
    source: Path,
) -> dict[str, torch.Tensor]:
    """kohya tensors with ``alpha = rank``; a scale the diffusers file declares goes into lora_up."""
    alpha_rule = peft_alpha_rule(metadata)
    out: dict[str, torch.Tensor] = {}
    for entry in modules.values():
        _only_lora(entry, source)
        component, path = split_component(entry.key)
        try:
            if component == "unet":
                key = keymap.unet_kohya_name(path, family)
            else:
                index = (
                    family.te_diffusers_prefixes.index(component)
                    if component in family.te_diffusers_prefixes
                    else -1
                )
                if index < 0:
                    raise KeyError(f"{family.name} has no {component}")
                key = keymap.text_encoder_kohya_name(path, index, family)
        except KeyError as err:
            raise LorakilnError(
                f"{source.name}: module {entry.key}: {err.args[0]}; is --family right?"
            ) from None
        down, up = tensors[entry.tensors["down"]], tensors[entry.tensors["up"]]
        rank = down.shape[0]
        if "alpha" in entry.tensors:  # ComfyUI/A1111 read a stored alpha
            alpha: float | None = float(tensors[entry.tensors["alpha"]])
        else:
            alpha = alpha_rule(entry.key, rank) if alpha_rule else None
        scale = 1.0 if alpha is None else alpha / rank
        if f"{key}.lora_down.weight" in out:
            raise LorakilnError(f"{source.name}: two modules map to the kohya key {key}")
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = _scaled(up, scale)
        # 0-dim alpha in the file's dtype, as kohya's save_weights casts it.
        out[f"{key}.alpha"] = torch.tensor(float(rank), dtype=down.dtype)
    return out


def _pick_family(
    info_family: str | None, reason: str, requested: str | None, modules: dict[str, ModuleEntry], source: Path
) -> ModelFamily:
    if requested is not None:
        if requested not in FAMILIES:
            raise LorakilnError(f"unknown --family {requested!r}; valid: {', '.join(sorted(FAMILIES))}")
        by_keys, key_reason = family_from_keys(modules)
        if by_keys and by_keys != requested:
            raise LorakilnError(
                f"{source.name} is a {by_keys} LoRA ({key_reason}), not {requested}; "
                "drop --family or pick the right one"
            )
        return FAMILIES[requested]
    if info_family is None:
        raise LorakilnError(
            f"cannot tell whether {source.name} is for SD 1.x or SDXL (no metadata, no decisive "
            "key names); pass --family sd1 or --family sdxl"
        )
    if info_family not in FAMILIES:
        raise LorakilnError(
            f"{source.name} is an {info_family} LoRA ({reason}); lorakiln converts SD 1.x and SDXL LoRAs only"
        )
    return FAMILIES[info_family]


def output_path(dst: str | Path, target: str) -> Path:
    """diffusers accepts a folder (→ ``pytorch_lora_weights.safetensors``); kohya needs a file."""
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        return dst
    if target == "diffusers":
        return dst / DIFFUSERS_WEIGHT_NAME
    raise LorakilnError(
        f"{dst}: a kohya LoRA file must end in .safetensors (A1111 and ComfyUI list only those)"
    )


def convert_lora(
    src: str | Path, dst: str | Path, to: str, *, family: str | None = None, force: bool = False
) -> ConvertResult:
    """Convert the LoRA file `src` to the `to` format ("kohya" or "diffusers") at `dst`, atomically."""
    if to not in TARGETS:
        raise LorakilnError(f"unknown target format {to!r}; valid: {', '.join(TARGETS)}")
    source = resolve_input(src)
    out_path = check_output(output_path(dst, to), [source], verb="lora convert", force=force)
    header = read_header(source)
    modules, bundled, foreign = group_modules(list(header.tensors))
    if not modules:
        raise LorakilnError(
            f"{source.name} has no LoRA keys: it looks like {describe_non_lora(header)}"
        )
    info_family, reason, _ = detect_family(modules, header.metadata)
    styles = {m.style for m in modules.values()}
    if "kohya" in styles and styles != {"kohya"}:
        raise LorakilnError(
            f"{source.name} mixes kohya and diffusers keys; lorakiln cannot tell how clients read it"
        )
    source_format = "kohya" if styles == {"kohya"} else "diffusers"
    if source_format == to:
        what = "kohya-style" if to == "kohya" else "diffusers"
        raise LorakilnError(f"{source.name} is already a {what} LoRA file; nothing to convert")
    if bundled:
        raise LorakilnError(
            f"{source.name} bundles textual-inversion embeddings (bundle_emb.*), which diffusers "
            "LoRA files cannot hold; A1111 is the only client that reads them"
        )
    if foreign:
        raise LorakilnError(
            f"{source.name}: key {foreign[0]!r} is not part of a LoRA module; refusing to drop it"
        )
    fam = _pick_family(info_family, reason, family, modules, source)
    tensors = read_lora_checked(source)[0]  # NaN/inf and rank layout (file_checks)
    notes: list[str] = []
    if to == "diffusers":
        converted = kohya_to_diffusers(tensors, modules, fam, source)
        metadata = {"format": "pt"}
        if any(k.startswith("ss_") for k in header.metadata):
            notes.append("the ss_* training metadata is not carried over: diffusers files hold none")
    else:
        converted = diffusers_to_kohya(tensors, modules, header.metadata, fam, source)
        metadata = kohya_file_metadata(header.metadata, converted, fam, out_path.stem)
    check_output(out_path, [source], verb="lora convert", force=force)  # nothing changed meanwhile
    write_output(out_path, save(converted, metadata))
    return ConvertResult(source, out_path, source_format, to, fam.name, len(modules), notes)


def describe_result(result: ConvertResult) -> str:
    lines = [f"wrote {result.path} ({result.target} format, {result.family}, {result.modules} modules)"]
    if result.target == "kohya":
        lines.append(
            "  AUTOMATIC1111 / Forge: models/Lora; ComfyUI: models/loras; diffusers: "
            f'pipe.load_lora_weights("{result.path}")'
        )
    else:
        folder = result.path.parent if result.path.name == DIFFUSERS_WEIGHT_NAME else result.path
        lines.append(f'  diffusers: pipe.load_lora_weights("{folder}")')
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
