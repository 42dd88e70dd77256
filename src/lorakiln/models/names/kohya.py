"""kohya LoRA key names ⇄ diffusers / PEFT module paths, and A1111's rules for resolving them.

Four naming schemes meet here (kohya sd-scripts, A1111, diffusers, LDM/SGM checkpoints):

* **diffusers module paths** of the live model (``down_blocks.0.attentions.0.proj_in``,
  ``encoder.layers.0.self_attn.q_proj`` — transformers ≥ 5.6 has no ``text_model.`` level);
* **kohya keys** written to files: ``lora_unet_`` + path with ``.``→``_`` (SD1: diffusers path;
  SDXL: SGM/LDM path, as sd-scripts writes them), ``lora_te*_`` + the *classic* ``text_model.`` path;
* **diffusers/PEFT names** (``unet.<path>`` / ``text_encoder.text_model.<path>``) for the
  second-class diffusers export;
* **LDM/CompVis names** that A1111 resolves kohya keys to (``networks.py`` ``load_network``), used by the spec tests to prove
  our names land on real LDM modules.

The diffusers ⇄ SGM/LDM U-Net path table is the sibling module `ldm` (the checkpoint writer
needs it too); every LoRA key is built here from that one table.

The A1111 rule table and the diffusers→LDM table are written from the clients' documented rules
(A1111 ``convert_diffusers_name_to_compvis``, sd-scripts ``model_util.py``), not copied from their code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from lorakiln.models.family import ModelFamily
from lorakiln.models.names.ldm import (
    RESNET_TO_LDM,
    UP_ATTENTION_LEVELS,
    diffusers_to_ldm_path,
    ldm_to_diffusers_path,
)

UNET_PREFIX = "lora_unet"
#: Module-key prefixes of kohya-format files: the U-Net, SD1's text encoder, SDXL's two.
KOHYA_FILE_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
#: Classic HF CLIP root that kohya/A1111/ComfyUI/diffusers all expect in TE keys (transformers ≥ 5.6 dropped it).
CLASSIC_TE_ROOT = "text_model."

#: Multi-word tokens of diffusers, SGM and CLIP module paths. Turning a kohya key back into a
#: dotted path is ambiguous (``to_q`` vs ``to.q``) without knowing these.
_COMPOUND_TOKENS: tuple[str, ...] = (
    # diffusers UNet
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "to_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "conv_norm_out", "time_embedding", "add_embedding", "linear_1", "linear_2",
    # SGM / LDM UNet
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb",
    # CLIP text encoder
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1",
    "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding", "text_projection",
)  # fmt: skip
_COMPOUNDS_BY_LEN: list[tuple[int, frozenset[str]]] = sorted(
    (
        (n, frozenset(c for c in _COMPOUND_TOKENS if c.count("_") + 1 == n))
        for n in {c.count("_") + 1 for c in _COMPOUND_TOKENS}
    ),
    reverse=True,
)  # longest first, so `conv_norm_out` wins over `conv`


def _underscores_to_path(flat: str) -> str:
    """Inverse of ``path.replace(".", "_")`` for SD module paths, using `_COMPOUND_TOKENS`."""
    tokens = flat.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for n, compounds in _COMPOUNDS_BY_LEN:
            if "_".join(tokens[i : i + n]) in compounds:
                parts.append("_".join(tokens[i : i + n]))
                i += n
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


# --------------------------------------------------------------------------------------------
# kohya keys (sd-scripts `networks/lora.py`)
# --------------------------------------------------------------------------------------------


def _unet_levels(family: ModelFamily) -> frozenset[int]:
    return UP_ATTENTION_LEVELS["sdxl" if family.unet_key_style == "sgm" else "sd1"]


def unet_kohya_name(diffusers_path: str, family: ModelFamily) -> str:
    """``lora_unet_`` + module path with ``.``→``_``; SGM path for SGM-style families (as kohya)."""
    path = diffusers_path
    if family.unet_key_style == "sgm":
        path = diffusers_to_ldm_path(path, _unet_levels(family))
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def classic_text_model_path(hf_path: str) -> str:
    """The pre-transformers-5.6 module path (``text_model.encoder…``), whatever transformers is installed."""
    return hf_path if hf_path.startswith(CLASSIC_TE_ROOT) else CLASSIC_TE_ROOT + hf_path


def text_encoder_kohya_name(hf_path: str, te_index: int, family: ModelFamily) -> str:
    """``lora_te[12]_`` + classic ``text_model.`` path with ``.``→``_`` (as kohya)."""
    prefix = family.te_lora_prefixes[te_index]
    return f"{prefix}_{classic_text_model_path(hf_path).replace('.', '_')}"


def kohya_to_diffusers_module(kohya_name: str, family: ModelFamily) -> tuple[str, str]:
    """Split a kohya module key into ``(component, module path)``.

    component is ``"unet"`` or one of ``family.te_diffusers_prefixes``; the path is the diffusers
    U-Net path or the classic ``text_model.`` CLIP path. Raises ``KeyError`` for foreign prefixes.
    """
    unet_head = UNET_PREFIX + "_"
    if kohya_name.startswith(unet_head):
        path = _underscores_to_path(kohya_name[len(unet_head) :])
        if family.unet_key_style == "sgm":
            path = ldm_to_diffusers_path(path, _unet_levels(family))
        return "unet", path
    # Longest prefix first: "lora_te1_" must not be read as "lora_te" + "1_…".
    pairs = sorted(
        zip(family.te_lora_prefixes, family.te_diffusers_prefixes, strict=True), key=lambda p: -len(p[0])
    )
    for kohya_prefix, component in pairs:
        if kohya_name.startswith(kohya_prefix + "_text_model_"):
            return component, _underscores_to_path(kohya_name[len(kohya_prefix) + 1 :])
    raise KeyError(f"{kohya_name!r} is not a {family.name} kohya LoRA module key")


def resolve_kohya_module(key: str, family: ModelFamily) -> tuple[str, str]:
    """``(component, diffusers path)`` of a kohya module key, whichever U-Net naming it uses.

    Beyond `kohya_to_diffusers_module` this accepts the two off-style namings found
    in the wild: SDXL keys with diffusers-style U-Net names (diffusers' advanced SDXL
    script) and SD1 keys with LDM names (loaded by A1111/ComfyUI, not diffusers); ``lycoris_`` keys use
    diffusers U-Net names (LyCORIS ``wrapper.py``, read by ComfyUI). Raises ``KeyError`` for keys of another family.
    """
    if key.startswith("lycoris_"):
        key = "lora_unet_" + key[len("lycoris_") :]
        family = dataclasses.replace(family, unet_key_style="diffusers")
    try:
        component, path = kohya_to_diffusers_module(key, family)
    except KeyError:
        if family.unet_key_style != "sgm" or not key.startswith(UNET_PREFIX + "_"):
            raise
        component, path = kohya_to_diffusers_module(
            key, dataclasses.replace(family, unet_key_style="diffusers")
        )
        if not path.startswith(("down_blocks", "mid_block", "up_blocks")):
            raise
    if component == "unet" and path.startswith(("input_blocks", "middle_block", "output_blocks")):
        path = ldm_to_diffusers_path(path, UP_ATTENTION_LEVELS[family.name])
    return component, path


def peft_module_name(kohya_name: str, family: ModelFamily) -> str:
    """diffusers/PEFT module name (``unet.<path>``, ``text_encoder.text_model.<path>``)."""
    component, path = kohya_to_diffusers_module(kohya_name, family)
    return f"{component}.{path}"


# --------------------------------------------------------------------------------------------
# A1111 `convert_diffusers_name_to_compvis` rules (`extensions-builtin/Lora/networks.py`) — for the spec tests.
# --------------------------------------------------------------------------------------------

_A1111_RESNET_SUFFIX = {k: v.replace(".", "_") for k, v in RESNET_TO_LDM.items()}


def _a1111_block_suffix(kind: str, rest: str) -> str:
    if kind == "attentions":
        return rest
    for src, dst in _A1111_RESNET_SUFFIX.items():
        if rest == src or rest.startswith(src + "_"):
            return dst + rest[len(src) :]
    return rest


_A1111_RULES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[3])}_"
     f"{1 if m[2] == 'attentions' else 0}_{_a1111_block_suffix(m[2], m[4])}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else 2 * int(m[2])}_"
     f"{_a1111_block_suffix(m[1], m[3])}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[3])}_"
     f"{1 if m[2] == 'attentions' else 0}_{_a1111_block_suffix(m[2], m[4])}"),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
     lambda m: f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"),
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda m: f"diffusion_model_output_blocks_{2 + 3 * int(m[1])}_{2 if int(m[1]) > 0 else 1}_conv"),
    (r"lora_te_text_model_encoder_layers_(\d+)_(.+)",
     lambda m: f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"),
    # SDXL (A1111 `load_network` and its fallbacks): TE1 is A1111's `0_transformer_text_model…`; TE2 is OpenCLIP,
    # `1_model_transformer_resblocks_N_…` with fc1/fc2 → mlp_c_fc/mlp_c_proj, self_attn → attn.
    (r"lora_te1_text_model_(.+)", lambda m: f"0_transformer_text_model_{m[1]}"),
    (r"lora_te2_text_model_encoder_layers_(\d+)_(.+)",
     lambda m: f"1_model_transformer_resblocks_{m[1]}_"
     + m[2].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")),
]  # fmt: skip

#: A1111's `re_x_proj` fallback (`networks.py`): a q/k/v projection maps to its parent attention
#: module (an OpenCLIP `MultiheadAttention` with a fused in_proj), patched only when the q, k,
#: v and out_proj LoRAs of that layer are all present.
A1111_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def a1111_compvis_name(kohya_module_key: str) -> str:
    """What A1111 looks up in its LDM layer map for a kohya module key (``load_network``: regex table, then fallbacks).

    Keys no rule matches fall back to ``lora_unet``→``diffusion_model`` (SGM-named keys), as
    A1111 does; anything else is returned unchanged (A1111 then ignores it silently).
    """
    for pattern, build in _A1111_RULES:
        m = re.fullmatch(pattern, kohya_module_key)
        if m:
            return build(m)
    if kohya_module_key.startswith(UNET_PREFIX + "_"):
        return "diffusion_model_" + kohya_module_key[len(UNET_PREFIX) + 1 :]
    return kohya_module_key


def sd1_ldm_module_names(unet_module_names: Iterable[str], te_module_names: Iterable[str]) -> set[str]:
    """A1111's SD1 ``network_layer_mapping`` keys, derived from diffusers module names via the diffusers→LDM U-Net table.

    U-Net modules that have an LDM equivalent become ``diffusion_model_<ldm path _>``; text encoder
    modules become ``transformer_<classic path _>`` (``cond_stage_model.`` is stripped by A1111).
    """
    names: set[str] = set()
    for path in unet_module_names:
        try:
            ldm = diffusers_to_ldm_path(path, UP_ATTENTION_LEVELS["sd1"])
        except KeyError:
            continue  # containers such as `down_blocks` have no single LDM module
        names.add("diffusion_model_" + ldm.replace(".", "_"))
    for path in te_module_names:
        if path:
            names.add("transformer_" + classic_text_model_path(path).replace(".", "_"))
    return names
