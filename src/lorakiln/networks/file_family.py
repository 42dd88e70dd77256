"""Which base model a LoRA file was made for, from its key names and its metadata.

One rule for every reader — generation (`apply.py`), the LoRA tools' readers, `lora info`,
`convert`, merges and ZipLoRA — so a file is never "SDXL" to one command and "unknown" to
another. Key names win: two text encoders (``lora_te1_``/``lora_te2_``, kohya sd-scripts
``networks/lora.py``) or a U-Net fragment only one family's structure has. Metadata
(``ss_base_model_version``/``ss_v2`` from sd-scripts, ``modelspec.architecture`` from the
Stability AI model spec) decides when the keys do not, and says SD 2.x, which shares SD 1.x's
names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: U-Net name fragments (module path with "."→"_") that only one family's structure has (U-Net
#: structure: SD1 attentions in down 0–2 / up 1–3, one transformer; SDXL down 1–2 / up 0–1,
#: depth 2 or 10, no fourth level).
_SDXL_UNET = re.compile(
    r"transformer_blocks_[1-9]|up_blocks_0_attentions|output_blocks_[0-2]_1_(transformer|proj|norm)"
)
_SD1_UNET = re.compile(
    r"down_blocks_0_attentions|(up|down)_blocks_3_|input_blocks_[12]_1_|(input|output)_blocks_(9|1[01])_"
)


def family_from_metadata(metadata: Mapping[str, str]) -> tuple[str | None, str]:
    """(family, reason) from ``ss_base_model_version``/``ss_v2``/``modelspec.architecture`` (as A1111's ``detect_version``)."""
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl", f"ss_base_model_version = {version}"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2", f"ss_base_model_version = {version}" if version else "ss_v2 = True"
    if version.startswith("sd_v1"):
        return "sd1", f"ss_base_model_version = {version}"
    arch = metadata.get("modelspec.architecture", "")
    for head, name in (
        ("stable-diffusion-xl", "sdxl"),
        ("stable-diffusion-v2", "sd2"),
        ("stable-diffusion-v1", "sd1"),
    ):
        if arch.startswith(head):
            return name, f"modelspec.architecture = {arch}"
    return None, ""


def family_from_keys(keys: Iterable[str]) -> tuple[str | None, str]:
    """(family, reason) from text-encoder prefixes, else from U-Net structure, else (None, "").

    `keys` are module names or tensor names (``….lora_down.weight``): only prefixes and U-Net
    path fragments are read."""
    keys = list(keys)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl", "two text encoders"
    for k in keys:
        flat = k.replace(".", "_")
        if k.startswith(("lora_unet_", "lycoris_", "unet.", "down_blocks", "mid_block", "up_blocks")):
            if _SDXL_UNET.search(flat):
                return "sdxl", f"SDXL U-Net structure ({k})"
            if _SD1_UNET.search(flat):
                return "sd1", f"SD 1.x U-Net structure ({k})"
    if any(k.startswith(("lora_te_", "text_encoder.")) for k in keys):
        return "sd1", "one text encoder"
    return None, ""


def detect_family(keys: Iterable[str], metadata: Mapping[str, str]) -> tuple[str | None, str, list[str]]:
    """(family, reason, notes). Key names win over metadata; SD 2.x shares SD1's names, so
    metadata saying SD2 wins over one-text-encoder evidence."""
    by_keys, key_reason = family_from_keys(keys)
    by_md, md_reason = family_from_metadata(metadata)
    notes: list[str] = []
    if by_keys and by_md and by_keys != by_md:
        if by_md == "sd2" and by_keys == "sd1":
            return "sd2", md_reason, notes
        notes.append(
            f"metadata says {by_md} ({md_reason}) but the keys are {by_keys} ({key_reason}); "
            "trusting the keys"
        )
    if by_keys and by_keys == by_md:
        return by_keys, f"{md_reason}; {key_reason}", notes
    if by_keys:
        return by_keys, key_reason, notes
    return by_md, md_reason, notes
