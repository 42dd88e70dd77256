"""diffusers ⇄ SGM/LDM U-Net module paths: the one table both directions and all users share.

The single-file checkpoint writer (`ldm_export`) names U-Net weights with it, and the LoRA key
map (`lorakiln.models.names.kohya`) builds SDXL kohya keys and reads SGM-named ones with it. It
describes the model's structure, not any file format, so it sits in `models`, below both.

Both SD 1.x and SDXL use 2 resnets per level, hence 3 LDM input blocks and 3 output blocks per
level. Inside attention blocks the names are identical; resnets rename their children
(`conv1` ⇄ `in_layers.2`, …) and top-level modules are mapped one by one.
"""

from __future__ import annotations

import re

#: Up levels whose upsampler sits after an attention (LDM index 2) rather than a resnet (index 1).
#: SD1: up_blocks 1-3 have attentions; SDXL: up_blocks 0-1.
UP_ATTENTION_LEVELS: dict[str, frozenset[int]] = {
    "sd1": frozenset({1, 2, 3}),
    "sdxl": frozenset({0, 1}),
}
RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
    "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}  # fmt: skip
_LDM_TO_RESNET = {v: k for k, v in RESNET_TO_LDM.items()}
_TOP_LEVEL_TO_LDM = {
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}  # fmt: skip
_LDM_TO_TOP_LEVEL = {v: k for k, v in _TOP_LEVEL_TO_LDM.items()}


def _resnet_suffix(rest: str, table: dict[str, str]) -> str:
    """Rename a resnet child (`conv1` ⇄ `in_layers.2`, …), keeping any deeper path."""
    for src, dst in table.items():  # prefix match: LDM names have two parts (`in_layers.2`)
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    return rest


def diffusers_to_ldm_path(path: str, up_attention_levels: frozenset[int]) -> str:
    """Map a diffusers U-Net module path to its LDM/SGM path; `KeyError` if it has none."""
    for src, dst in _TOP_LEVEL_TO_LDM.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.+))?", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        return _ldm_block(f"input_blocks.{3 * i + j + 1}", kind, rest)
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path)
    if m:
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op{m[2]}"
    m = re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)(?:\.(.+))?", path)
    if m:
        # middle_block is a flat Sequential (resnet, attention, resnet): no inner index.
        idx = 1 if m[1] == "attentions" else 2 * int(m[2])
        rest = m[3] or ""
        if m[1] == "resnets":
            rest = _resnet_suffix(rest, RESNET_TO_LDM)
        return f"middle_block.{idx}" + (f".{rest}" if rest else "")
    m = re.fullmatch(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.+))?", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        return _ldm_block(f"output_blocks.{3 * i + j}", kind, rest)
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0(.*)", path)
    if m:
        i = int(m[1])
        return f"output_blocks.{3 * i + 2}.{2 if i in up_attention_levels else 1}{m[2]}"
    raise KeyError(f"no LDM equivalent known for U-Net module {path!r}")


def _ldm_block(block: str, kind: str, rest: str) -> str:
    if kind == "attentions":  # names inside attention blocks are identical
        return f"{block}.1" + (f".{rest}" if rest else "")
    return f"{block}.0" + (f".{_resnet_suffix(rest, RESNET_TO_LDM)}" if rest else "")


def ldm_to_diffusers_path(path: str, up_attention_levels: frozenset[int]) -> str:
    """Inverse of `diffusers_to_ldm_path` (used to read SGM-named SDXL kohya keys)."""
    for src, dst in _LDM_TO_TOP_LEVEL.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    m = re.fullmatch(r"input_blocks\.(\d+)\.0\.op(.*)", path)
    if m:
        return f"down_blocks.{int(m[1]) // 3 - 1}.downsamplers.0.conv{m[2]}"
    m = re.fullmatch(r"middle_block\.(\d+)(?:\.(.+))?", path)
    if m:
        n, rest = int(m[1]), m[2] or ""
        if n == 1:
            return "mid_block.attentions.0" + (f".{rest}" if rest else "")
        rest = _resnet_suffix(rest, _LDM_TO_RESNET)
        return f"mid_block.resnets.{n // 2}" + (f".{rest}" if rest else "")
    m = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.+))?", path)
    if not m:
        raise KeyError(f"no diffusers equivalent known for LDM module {path!r}")
    block, n, sub, rest = m[1], int(m[2]), int(m[3]), m[4] or ""
    if (
        block == "output_blocks"
        and n % 3 == 2
        and (sub == 2 or (sub == 1 and n // 3 not in up_attention_levels))
    ):
        return f"up_blocks.{n // 3}.upsamplers.0" + (f".{rest}" if rest else "")
    kind = "attentions" if sub == 1 else "resnets"
    tail = rest if kind == "attentions" else _resnet_suffix(rest, _LDM_TO_RESNET)
    if block == "input_blocks":
        head = f"down_blocks.{(n - 1) // 3}.{kind}.{(n - 1) % 3}"
    else:
        head = f"up_blocks.{n // 3}.{kind}.{n % 3}"
    return head + (f".{tail}" if tail else "")
