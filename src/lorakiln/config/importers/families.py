"""Model families lorakiln does not train, recognised in an imported config and refused.

A Flux.1 preset of the kohya_ss GUI shares most of its fields with an SD one; imported field by
field it would become an SD 1.x run that trains something else entirely. So before any option
is mapped, the script name (sd-scripts' `flux_train_network.py`, diffusers'
`train_dreambooth_lora_sd3.py`, musubi-tuner's `wan_train_network.py` ...), the GUI's model
switches (`flux1_checkbox`, `sd3_checkbox`, `v2`, `LoRA_type = "Flux1"`), the model-specific
files (`ae`, `t5xxl`, `clip_g`), the network module (`networks.lora_flux`) and the base model's
name are checked; a match is a `ConfigError` naming the family (the CLI exits with 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lorakiln.config.importers.draft import is_off
from lorakiln.errors import ConfigError

_SD3 = "Stable Diffusion 3"
_VIDEO = " (a video model)"
#: Words of a training script's name → the family it trains (sd-scripts, diffusers examples,
#: musubi-tuner script names).
SCRIPT_WORDS: dict[str, str] = {
    "flux": "Flux.1", "kontext": "Flux.1", "sd3": _SD3, "lumina": "Lumina", "lumina2": "Lumina 2",
    "hunyuan": "Hunyuan", "hv": "HunyuanVideo" + _VIDEO, "wan": "Wan" + _VIDEO,
    "cogvideox": "CogVideoX" + _VIDEO, "ltx": "LTX-Video" + _VIDEO, "mochi": "Mochi" + _VIDEO,
    "fpack": "FramePack" + _VIDEO, "framepack": "FramePack" + _VIDEO, "animatediff": "AnimateDiff" + _VIDEO,
    "sana": "Sana", "hidream": "HiDream", "qwen": "Qwen-Image", "pixart": "PixArt", "auraflow": "AuraFlow",
    "cascade": "Stable Cascade", "anima": "Anima", "chroma": "Chroma", "kandinsky": "Kandinsky",
}  # fmt: skip
#: Base-model names (hub ids, file names) → family.
MODEL_NAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), f) for p, f in (
    (r"flux", "Flux.1"), (r"stable-diffusion-3|(^|[^a-z0-9])sd3", _SD3),
    (r"stable-diffusion-2|(^|[^a-z0-9])sd2[01]?([^0-9]|$)", "Stable Diffusion 2.x"),
    (r"cogvideo", "CogVideoX" + _VIDEO), (r"ltx-?video", "LTX-Video" + _VIDEO),
    (r"hunyuan", "Hunyuan"), (r"wan-ai|(^|[^a-z0-9])wan2", "Wan" + _VIDEO), (r"(^|/)sana", "Sana"),
    (r"hidream", "HiDream"), (r"qwen-image", "Qwen-Image"), (r"lumina", "Lumina"), (r"pixart", "PixArt"),
    (r"auraflow", "AuraFlow"), (r"stable-cascade", "Stable Cascade"),
))  # fmt: skip
#: Options whose being on or set names a family (kohya_ss GUI switches, sd-scripts files).
SWITCHES: dict[str, str] = {
    "flux1_checkbox": "Flux.1", "sd3_checkbox": _SD3, "v2": "Stable Diffusion 2.x", "ae": "Flux.1",
    "t5xxl": "Flux.1 or Stable Diffusion 3", "clip_g": _SD3, "clip_l": "Flux.1 or Stable Diffusion 3",
}  # fmt: skip
#: sd-scripts network modules of other families.
MODULES: dict[str, str] = {
    "networks.lora_flux": "Flux.1", "networks.oft_flux": "Flux.1", "networks.lora_sd3": _SD3,
    "networks.lora_lumina": "Lumina", "networks.lora_hunyuan_image": "HunyuanImage",
    "networks.lora_anima": "Anima",
}  # fmt: skip
#: kohya_ss GUI `LoRA_type` values of other families.
GUI_TYPES = {"Flux1": "Flux.1", "Flux1 OFT": "Flux.1"}
_MODEL_KEYS = ("pretrained_model_name_or_path", "model_list")


def script_family(script: str | None) -> str | None:
    """The family a training script trains, from the words of its name."""
    if not script:
        return None
    words = re.split(r"[_.\-]+", script.lower().removesuffix(".py"))
    return next((SCRIPT_WORDS[w] for w in words if w in SCRIPT_WORDS), None)


def model_family(name: str) -> str | None:
    """The family a base model's hub id or file name names, if it is not SD 1.x/SDXL."""
    lowered = str(name).lower().replace("\\", "/")
    return next((family for pattern, family in MODEL_NAMES if pattern.search(lowered)), None)


def _shown(name: str, value: Any) -> str:
    import json

    return f"{name} = {json.dumps(value)}"


def find_family(options: Mapping[str, Any], script: str | None = None) -> tuple[str, str] | None:
    """(family, evidence) when `options` (or the script) train a family lorakiln does not."""
    family = script_family(script)
    if family:
        return family, f"the script {script}"
    for name, family in SWITCHES.items():
        value = options.get(name)
        if value is not None and not is_off(value):
            return family, _shown(name, value)
    module = str(options.get("network_module") or "").strip()
    if module in MODULES:
        return MODULES[module], _shown("network_module", module)
    kind = str(options.get("LoRA_type") or "")
    if kind in GUI_TYPES:
        return GUI_TYPES[kind], _shown("LoRA_type", kind)
    for name in _MODEL_KEYS:
        value = options.get(name)
        family = model_family(value) if isinstance(value, str) and value else None
        if family:
            return family, _shown(name, value)
    return None


def refuse_other_families(options: Mapping[str, Any], script: str | None = None) -> None:
    """Raise a `ConfigError` naming the family when the source trains one lorakiln does not."""
    found = find_family(options, script)
    if found:
        family, evidence = found
        raise ConfigError(f"this config trains a {family} LoRA ({evidence}); lorakiln trains Stable Diffusion "
                          "1.x and SDXL only, so nothing was imported. Train it with the tool it was written "
                          "for, or start from an SD 1.5/SDXL config.")
