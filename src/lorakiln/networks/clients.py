"""Which clients load a LoRA file of each key layout: one table for `lora info` and the trainer.

`lorakiln lora info` prints the table's line for the file it reads; `lorakiln train` names, at
the end of a run, only the clients that load the file it wrote — a LoHa file must not come
with a `pipe.load_lora_weights(...)` line, since diffusers raises on it. Both read this table,
so they cannot disagree. The facts come from the clients' loaders: A1111's
``extensions-builtin/Lora/network_*.py`` (LoRA, LoHa, LoKr, DoRA ``dora_scale``), ComfyUI's
``comfy/lora.py`` and ``comfy/weight_adapter/``, and diffusers'
``lora_conversion_utils._convert_kohya_lora_to_diffusers`` / ``_convert_non_diffusers_lora_to_diffusers``
(which raise on ``hada_``/``lokr_``/``lora_mid`` keys and drop ``dora_scale``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FORMAT_CLIENTS", "MAIN_CLIENTS", "kohya_file_layout", "loaded_by"]

#: What each layout loads in. The first clause (up to the first ";") lists the clients that load
#: such a file whole; the rest says who does not, or only in part.
FORMAT_CLIENTS = {
    "kohya": "AUTOMATIC1111, Forge, SD.Next, ComfyUI, kohya, diffusers",
    "lycoris": "AUTOMATIC1111, Forge, SD.Next, ComfyUI; not diffusers (it raises on LoHa/LoKr/lora_mid)",
    "diffusers": "diffusers, SD.Next; not AUTOMATIC1111; ComfyUI skips its U-Net attention keys — "
    "`lorakiln lora convert … --to kohya` gives a file every client loads",
    "diffusers-old": "diffusers; ComfyUI maps part of it; not AUTOMATIC1111",
    "mixed": "unclear: clients disagree on mixed files",
}
#: The clients the end-of-training advice has a line for.
MAIN_CLIENTS = ("AUTOMATIC1111", "ComfyUI", "diffusers")
#: Per-module key parts that make a kohya-prefixed file a LyCORIS one (LyCORIS ``modules/*.py``):
#: LoHa, LoKr, LoCon's Tucker middle, DoRA magnitudes — what `lora info` reports as "lycoris".
_LYCORIS_PARTS = (".hada_", ".lokr_", ".lora_mid.", ".dora_scale")


def loaded_by(layout: str) -> tuple[str, ...]:
    """The `MAIN_CLIENTS` that load a file of `layout` whole, read from `FORMAT_CLIENTS`."""
    loads = FORMAT_CLIENTS[layout].split(";", 1)[0].split(", ")
    return tuple(client for client in MAIN_CLIENTS if client in loads)


def kohya_file_layout(keys: Iterable[str]) -> str:
    """"lycoris" or "kohya" for a file lorakiln wrote with kohya prefixes (``lora_unet_…``), by
    the rule `lora info` applies to such files: any LyCORIS-only key (or ``lycoris_`` prefix)
    makes it "lycoris"."""
    for key in keys:
        if key.startswith("lycoris_") or any(part in f".{key.split('.', 1)[-1]}" for part in _LYCORIS_PARTS):
            return "lycoris"
    return "kohya"
