"""What a LoRA file's keys mean: key layout → modules, then modules → named blocks with ranks/alphas.

Kept apart from `header` (which only reads bytes) so the key rules read as one table. Layouts recognised:

* kohya ``lora_unet_*``/``lora_te*_*`` + ``lora_down``/``lora_up``/``alpha`` (sd-scripts ``networks/lora.py``);
* LyCORIS under the same prefixes: LoHa ``hada_*``, LoKr ``lokr_*``, Tucker ``lora_mid``, DoRA
  ``dora_scale``, full ``diff`` (LyCORIS ``modules/*.py``) — reported, not converted;
* diffusers/PEFT ``unet.…lora_A.weight`` and the older diffusers forms ``…lora.down.weight``,
  ``…lora_linear_layer.down.weight``, ``…processor.to_q_lora.down.weight`` (diffusers ``lora_pipeline.py``,
  ``lora_conversion_utils.py``).

Module names are translated only through `lorakiln.models.names.kohya`, the one module that
translates key names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lorakiln.lora_tools.files.header import SafetensorsHeader, TensorEntry, read_scalar
from lorakiln.models.family import FAMILIES
from lorakiln.models.names.kohya import KOHYA_FILE_PREFIXES, resolve_kohya_module

# --------------------------------------------------------------------------------------------
# keys → modules
# --------------------------------------------------------------------------------------------

KOHYA_PREFIXES = (*KOHYA_FILE_PREFIXES, "lycoris_")
DIFFUSERS_COMPONENTS = ("text_encoder_2", "text_encoder", "unet")  # longest first

#: Per-module parameter names after the first "." of a kohya/LyCORIS key → (algorithm, role).
#: kohya LoRA, LyCORIS, and A1111's module types (``network_*.py``, which also accept lora_A/lora_B).
_KOHYA_PARAMS: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"),
    "lora_mid.weight": ("lora", "mid"), "lora_A.weight": ("lora", "down"), "lora_B.weight": ("lora", "up"),
    "alpha": ("", "alpha"), "dora_scale": ("", "dora"), "scale": ("", "scale"),
    "hada_w1_a": ("loha", "w1_a"), "hada_w1_b": ("loha", "w1_b"), "hada_w2_a": ("loha", "w2_a"),
    "hada_w2_b": ("loha", "w2_b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1_a"), "lokr_w1_b": ("lokr", "w1_b"),
    "lokr_w2": ("lokr", "w2"), "lokr_w2_a": ("lokr", "w2_a"), "lokr_w2_b": ("lokr", "w2_b"),
    "lokr_t2": ("lokr", "t2"), "diff": ("full", "diff"), "diff_b": ("full", "diff_b"),
    "w_norm": ("norm", "w"), "b_norm": ("norm", "b"), "oft_blocks": ("oft", "blocks"),
    "oft_diag": ("oft", "blocks"), "a1.weight": ("glora", "a1"), "a2.weight": ("glora", "a2"),
    "b1.weight": ("glora", "b1"), "b2.weight": ("glora", "b2"), "on_input": ("ia3", "on_input"),
}  # fmt: skip
#: Parameter suffixes of diffusers-style keys → (algorithm, role, key style).
_DIFFUSERS_PARAMS: tuple[tuple[str, str, str, str], ...] = (
    ("lora_linear_layer.down.weight", "lora", "down", "diffusers-old"),
    ("lora_linear_layer.up.weight", "lora", "up", "diffusers-old"),
    ("lora.down.weight", "lora", "down", "diffusers-old"),
    ("lora.up.weight", "lora", "up", "diffusers-old"),
    ("lora_A.weight", "lora", "down", "diffusers"), ("lora_B.weight", "lora", "up", "diffusers"),
    ("lora_A.bias", "lora", "down_bias", "diffusers"), ("lora_B.bias", "lora", "up_bias", "diffusers"),
    ("lora_magnitude_vector", "", "dora", "diffusers"), ("alpha", "", "alpha", "diffusers"),
    ("lokr_w1", "lokr", "w1", "diffusers"), ("lokr_w2", "lokr", "w2", "diffusers"),
    ("lokr_w1_a", "lokr", "w1_a", "diffusers"), ("lokr_w1_b", "lokr", "w1_b", "diffusers"),
    ("lokr_w2_a", "lokr", "w2_a", "diffusers"), ("lokr_w2_b", "lokr", "w2_b", "diffusers"),
)  # fmt: skip
#: diffusers' old attention-processor form: ``…attn1.processor.to_q_lora.down.weight`` (``_convert_unet_lora_key``).
_ATTN_PROC = re.compile(
    r"(?P<mod>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight"
)
_ATTN_PROC_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_ATTN_PROC_TE = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

ALGORITHM_NAMES = {
    "lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "full": "full weight diff", "norm": "norm",
    "oft": "OFT", "glora": "GLoRA", "ia3": "IA3", "unknown": "unknown",
}  # fmt: skip


@dataclass
class ModuleEntry:
    """One patched layer: its key in the file and the tensors that make it up."""

    key: str
    #: "kohya" (lora_unet_… prefixes, LyCORIS included), "diffusers" or "diffusers-old".
    style: str
    #: role → tensor name, e.g. {"down": "lora_unet_x.lora_down.weight", "alpha": …}.
    tensors: dict[str, str] = field(default_factory=dict)
    algorithms: set[str] = field(default_factory=set)
    #: diffusers component ("unet", "text_encoder", "text_encoder_2") and module path, once known.
    component: str | None = None
    path: str | None = None

    @property
    def algorithm(self) -> str:
        algos = self.algorithms or {"unknown"}
        return "+".join(sorted(algos)) if len(algos) > 1 else next(iter(algos))

    @property
    def dora(self) -> bool:
        return "dora" in self.tensors


def _split_diffusers_key(key: str) -> tuple[str, str, str, str] | None:
    """``(module, algorithm, role, style)`` of a dotted diffusers-style key, or None."""
    m = _ATTN_PROC.fullmatch(key)
    if m:
        table = _ATTN_PROC_TE if m["mod"].endswith("self_attn") else _ATTN_PROC_UNET
        return f"{m['mod']}.{table[m['proj']]}", "lora", m["role"], "diffusers-old"
    for suffix, algo, role, style in _DIFFUSERS_PARAMS:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], algo, role, style
    return None


def group_modules(keys: list[str]) -> tuple[dict[str, ModuleEntry], list[str], list[str]]:
    """Group tensor names into modules; returns (modules, bundled-embedding keys, foreign keys)."""
    modules: dict[str, ModuleEntry] = {}
    bundled: list[str] = []
    foreign: list[str] = []
    for key in keys:
        if key.startswith("bundle_emb."):  # A1111 bundled TI (``networks.py``)
            bundled.append(key)
            continue
        if key.startswith(KOHYA_PREFIXES):
            module, _, param = key.partition(".")
            algo, role = _KOHYA_PARAMS.get(param, ("unknown", param))
            style = "kohya"
        else:
            split = _split_diffusers_key(key)
            if split is None or not _looks_like_diffusers_module(split[0]):
                foreign.append(key)
                continue
            module, algo, role, style = split
        entry = modules.setdefault(module, ModuleEntry(module, style))
        if style == "diffusers-old":
            entry.style = style
        entry.tensors[role] = key
        if algo:
            entry.algorithms.add(algo)
    return modules, bundled, foreign


def _looks_like_diffusers_module(module: str) -> bool:
    return module.startswith(tuple(c + "." for c in DIFFUSERS_COMPONENTS)) or module.startswith(
        ("down_blocks.", "mid_block.", "up_blocks.")  # unet-only attn-procs files had no prefix
    )


def split_component(module: str) -> tuple[str, str]:
    """``unet.down_blocks.0…`` → ("unet", "down_blocks.0…"); bare U-Net paths count as unet."""
    for component in DIFFUSERS_COMPONENTS:
        if module.startswith(component + "."):
            return component, module[len(component) + 1 :]
    return "unet", module


# --------------------------------------------------------------------------------------------
# format
# --------------------------------------------------------------------------------------------


def detect_format(modules: dict[str, ModuleEntry]) -> str:
    """The file's layout: "kohya", "lycoris", "diffusers", "diffusers-old" or "mixed"."""
    styles = {m.style for m in modules.values()}
    if {"diffusers", "diffusers-old"} & styles and "kohya" in styles:
        return "mixed"
    if "kohya" in styles:
        lycoris = any(m.algorithm != "lora" or m.dora or "mid" in m.tensors for m in modules.values())
        return "lycoris" if lycoris or any(k.startswith("lycoris_") for k in modules) else "kohya"
    return "diffusers-old" if "diffusers-old" in styles else "diffusers"


def describe_non_lora(header: SafetensorsHeader) -> str:
    """What a safetensors file without LoRA keys most likely is, with what to do with it."""
    keys = list(header.tensors)
    shape = {k: header.tensors[k].shape for k in keys}
    if not keys:
        return "an empty file (no tensors)"
    if "emb_params" in shape:
        return (
            f"an SD 1.x textual-inversion embedding (kohya emb_params, {shape['emb_params'][0]} vector(s)); "
            "put it in the embeddings folder, not the LoRA folder"
        )
    if "clip_l" in shape and "clip_g" in shape:
        return (
            f"an SDXL textual-inversion embedding (clip_l + clip_g, {shape['clip_l'][0]} vector(s)); "
            "put it in the embeddings folder"
        )
    if any(k.startswith("string_to_param") for k in keys) or "clip_l" in shape:
        return (
            "a textual-inversion embedding (A1111 string_to_param / clip_l); put it in the embeddings folder"
        )
    if any(k.startswith("model.diffusion_model.") for k in keys):
        kind = (
            "an SDXL" if any(k.startswith("conditioner.embedders.1.") for k in keys) else "a Stable Diffusion"
        )
        return f"{kind} full checkpoint (single-file LDM layout); use it as a base model (--model)"
    if any(k.startswith(("first_stage_model.", "encoder.down.", "decoder.up.")) for k in keys) or (
        "encoder.conv_in.weight" in shape and "decoder.conv_in.weight" in shape
    ):
        return "a VAE"
    if "conv_in.weight" in shape and any(k.startswith("down_blocks.") for k in keys):
        return "diffusers U-Net weights (a full model component, not a LoRA)"
    if any(k.startswith(("text_model.", "encoder.layers.", "transformer.resblocks.")) for k in keys):
        return "text-encoder weights (a full model component, not a LoRA)"
    if len(keys) == 1 and len(shape[keys[0]]) <= 2:
        return f"a textual-inversion embedding ({keys[0]!r}, shape {list(shape[keys[0]])})"
    return f"something else ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


# --------------------------------------------------------------------------------------------
# per-block module summaries
# --------------------------------------------------------------------------------------------


@dataclass
class BlockSummary:
    """Modules of one block: a text encoder, or one U-Net level."""

    name: str
    modules: int = 0
    ranks: list[int] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=list)


def _rank(entry: ModuleEntry, tensors: dict[str, TensorEntry]) -> int | None:
    """The rank the clients divide alpha by (LoRA: ``down.shape[0]``; LoHa ``w1_b``, LoKr
    ``w1_b``/``w2_b``; full LoKr factors and ``diff`` have none)."""
    for role in ("down", "w1_b", "w2_b"):
        if role in entry.tensors:
            shape = tensors[entry.tensors[role]].shape
            return shape[0] if shape else None
    return None


def _block_name(component: str | None, path: str | None, family: str | None) -> str:
    if component is None or path is None:
        return "unresolved keys"
    if component != "unet":
        if family == "sdxl":
            return {"text_encoder": "TE1 (CLIP-L)", "text_encoder_2": "TE2 (OpenCLIP-G)"}.get(
                component, component
            )
        return "text encoder"
    m = re.match(r"(down|up)_blocks\.(\d+)", path)
    if m:
        i = int(m[2])
        ldm = (
            f"input_blocks {3 * i + 1}–{3 * i + 3}"
            if m[1] == "down"
            else f"output_blocks {3 * i}–{3 * i + 2}"
        )
        return f"U-Net {m[1]} {i} ({ldm})"
    if path.startswith("mid_block"):
        return "U-Net mid (middle_block)"
    return "U-Net other"


def _block_order(name: str) -> tuple[int, int, str]:
    m = re.match(r"U-Net (down|up) (\d+)", name)
    if m:
        return (1 if m[1] == "down" else 3, int(m[2]), name)
    if name.startswith("U-Net mid"):
        return (2, 0, name)
    if name.startswith("U-Net"):
        return (4, 0, name)
    if name == "unresolved keys":
        return (5, 0, name)
    return (0, 0, name)


def resolve_modules(modules: dict[str, ModuleEntry], family: str | None) -> None:
    """Fill each entry's component and module path, so blocks can be named (kohya keys need the family)."""
    fam = FAMILIES.get("sd1" if family == "sd2" else family or "")
    for entry in modules.values():
        if entry.style == "kohya":
            if fam is None:
                continue
            try:
                entry.component, entry.path = resolve_kohya_module(entry.key, fam)
            except KeyError:
                continue
        else:
            entry.component, entry.path = split_component(entry.key)


def read_alphas(header: SafetensorsHeader, modules: dict[str, ModuleEntry]) -> dict[str, float]:
    """Each module's stored ``alpha``, read as scalars from one open file handle."""
    alphas: dict[str, float] = {}
    with open(header.path, "rb") as fh:
        for entry in modules.values():
            if "alpha" in entry.tensors:
                alphas[entry.key] = read_scalar(header, entry.tensors["alpha"], fh)
    return alphas


def peft_alpha_rule(metadata: dict[str, str]) -> Any:
    """``(module name, rank) -> alpha`` from diffusers' ``lora_adapter_metadata``, or None.

    diffusers builds each component's PEFT ``LoraConfig`` from it: ``lora_alpha`` with
    ``alpha_pattern`` overrides (PEFT matches a pattern as a suffix of the module name, or as a
    regex when it starts with ``^``) and ``use_rslora`` (scale alpha/√r). Without it diffusers
    uses alpha = rank. The returned alpha is adjusted so that alpha / rank is the true scale.
    """
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(config, dict):
        return None

    def alpha_for(module: str, rank: int) -> float | None:
        component, path = split_component(module)
        base = config.get(f"{component}.lora_alpha")
        if base is None:
            return None
        alpha = float(base)
        for pattern, value in (config.get(f"{component}.alpha_pattern") or {}).items():
            regex = pattern if pattern.startswith("^") else rf"(.*\.)?({pattern})$"
            if re.match(regex, path):
                alpha = float(value)
                break
        if config.get(f"{component}.use_rslora"):
            return alpha * rank / rank**0.5
        return alpha

    return alpha_for


def summarise_blocks(
    header: SafetensorsHeader, modules: dict[str, ModuleEntry], family: str | None, alphas: dict[str, float]
) -> tuple[list[BlockSummary], list[dict[str, Any]], Counter[str]]:
    """(blocks in U-Net order, one row per module, module count per algorithm). A module without
    an ``alpha`` tensor takes its alpha from diffusers' ``lora_adapter_metadata`` when there is one."""
    adapter_alpha = peft_alpha_rule(header.metadata)
    blocks: dict[str, BlockSummary] = {}
    rows: list[dict[str, Any]] = []
    algos: Counter[str] = Counter()
    for entry in modules.values():
        rank = _rank(entry, header.tensors)
        alpha = alphas.get(entry.key)
        if alpha is None and adapter_alpha is not None and entry.style != "kohya" and rank:
            alpha = adapter_alpha(entry.key, rank)
        scale = (alpha / rank if alpha is not None else 1.0) if rank else None
        name = _block_name(entry.component, entry.path, family)
        block = blocks.setdefault(name, BlockSummary(name))
        block.modules += 1
        algos[entry.algorithm] += 1
        for values, value in ((block.ranks, rank), (block.alphas, alpha), (block.scales, scale)):
            if value is not None and value not in values:
                values.append(value)
        if entry.algorithm not in block.algorithms:
            block.algorithms.append(entry.algorithm)
        rows.append(
            {
                "key": entry.key,
                "block": name,
                "algorithm": entry.algorithm,
                "dora": entry.dora,
                "rank": rank,
                "alpha": alpha,
                "scale": scale,
                "module": f"{entry.component}.{entry.path}" if entry.path else None,
            }
        )
    for block in blocks.values():
        block.ranks.sort()
        block.alphas.sort()
        block.scales.sort()
    return sorted(blocks.values(), key=lambda b: _block_order(b.name)), rows, algos
