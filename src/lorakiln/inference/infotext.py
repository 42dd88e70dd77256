"""AUTOMATIC1111's generation-parameters text ("infotext"), read and written.

A1111 stores how an image was made as one text block — in the PNG `parameters` tEXt chunk and in
the box under each picture — and its "paste" button (the blue arrow) reads that block back into
the UI. Speaking the same format lets a user copy a prompt from A1111 or civitai into lorakiln,
and drop a lorakiln PNG into A1111's "PNG Info" tab, with nothing lost. Layout
(A1111 `modules/processing.py` `create_infotext`, parsed by `modules/infotext_utils.py`
`parse_generation_parameters`)::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>
    Steps: 35, Sampler: Euler a, CFG scale: 7, Seed: 363423421, Size: 512x512

The last line is `Key: value` pairs joined by ", "; a value holding `,`, `:` or a newline is written
as a JSON string (`Lora hashes: "a: 1234, b: 5678"`). A1111 only treats the last line as
parameters when it holds at least 3 pairs; otherwise it is more prompt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.errors import ConfigError

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

#: The PNG text chunk A1111 writes and its "PNG Info" tab reads.
PNG_KEY = "parameters"

NEGATIVE_PREFIX = "Negative prompt:"

# One `Key: value` pair of the last line. Same grammar as A1111's `re_param_code`: a key starts with
# a word character and may hold spaces, '-' and '/'; a value is either a JSON-quoted string
# (backslash escapes allowed) or everything up to the next comma.
_PARAM = re.compile(
    r"""
    \s*(?P<key>\w[\w \-/]+):\s*
    (?P<value>"(?:\\.|[^\\"])+"|[^,]*)
    (?:,|$)
    """,
    re.VERBOSE,
)
_SIZE = re.compile(r"^(\d+)x(\d+)$")

# Keys in the order A1111 ≥1.9 `create_infotext` writes them; anything else (extension keys such as
# `Lora hashes`, `Hires upscale`, `ADetailer ...`) follows in its own order, then Version/User,
# which A1111 always puts last. "Batch size" sits where pre-1.6 A1111 wrote it; "Batch count" is
# not an A1111 key (A1111 never records n_iter) — lorakiln writes it only when it is not 1, and
# A1111 ignores unknown keys on paste.
_KNOWN_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "Batch size", "Batch count", "FP8 weight",
    "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed", "Variation seed strength",
    "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip", "ENSD",
    "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)
_LAST_KEYS = ("Version", "User")
# Keys held in typed fields rather than in `extra`.
_TYPED_KEYS = frozenset({"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip",
                         "Batch size", "Batch count"})


@dataclass
class GenerationParams:
    """Everything needed to redo one A1111 generation.

    Defaults are A1111's UI defaults (≥1.9, the values a paste leaves alone when the text lacks
    them): 20 steps, sampler "DPM++ 2M" with schedule type "Automatic" (= Karras for that sampler;
    A1111 before 1.9 defaulted to "Euler a"), CFG 7, seed -1 (random), 512x512, clip skip 1
    (A1111's parser fills a missing "Clip skip" with 1), batch size/count 1.

    `schedule_type` is a field, not an `extra` key, because it changes which sampler runs:
    A1111 ≥1.9 writes "Schedule type: Karras"; a parameter line *without* it comes from an older
    A1111, where the sampler name alone said it ("DPM++ 2M Karras"), so parsing such a line gives
    `None` (the name's own schedule), while a text with no parameter line at all gets the UI
    default "Automatic". `extra` keeps every other key with its raw string value, in order.
    """

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "DPM++ 2M"
    schedule_type: str | None = "Automatic"
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    clip_skip: int = 1
    batch_size: int = 1
    batch_count: int = 1
    extra: dict[str, str] = field(default_factory=dict)


#: Hex digits of a checkpoint's sha256 that A1111 writes as `Model hash` (`CheckpointInfo.shorthash`
#: in `modules/sd_models.py`: ``self.sha256[0:10]``).
MODEL_HASH_LENGTH = 10


def model_fields(name: str, sha256: str) -> dict[str, str]:
    """The `Model hash` and `Model` pairs A1111 writes for the checkpoint file an image was made with.

    A1111 (`modules/processing.py` `create_infotext`: ``p.sd_model_hash``, the checkpoint's
    `shorthash` — the first 10 hex digits of the file's sha256, `modules/sd_models.py`
    `CheckpointInfo` — and ``p.sd_model_name``, its `name_for_extra`: the file name without
    extension) writes both, and its paste and civitai look the checkpoint up by that hash.
    """
    return {"Model hash": sha256[:MODEL_HASH_LENGTH], "Model": name}


def quote(value: object) -> str:
    """A1111's `infotext_utils.quote`: JSON-quote a value only if it would break the line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(value: str) -> str:
    """Inverse of `quote`; a malformed quoted value is kept verbatim, as A1111 does."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def parse_param_line(line: str) -> dict[str, str]:
    """`Key: value, Key: value` → ordered dict of unquoted strings (empty values dropped, as A1111)."""
    out: dict[str, str] = {}
    for m in _PARAM.finditer(line):
        value = m.group("value").strip()
        if value:
            out[m.group("key").strip()] = unquote(value)
    return out


def _number(value: float) -> str:
    """7.0 → "7", 7.5 → "7.5": A1111's sliders hand integral CFG values over as ints."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _typed(key: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"infotext: {key!r} should be a number, got {raw!r}") from None


def parse_infotext(text: str) -> GenerationParams:
    """Read an A1111 infotext block (the inverse of `format_infotext`).

    Follows A1111's `parse_generation_parameters`: lines are stripped; the last line holds the
    parameters only if it has ≥3 `Key: value` pairs; every line from the one starting with
    "Negative prompt:" belongs to the negative prompt; multi-line prompts are joined with "\\n".
    """
    *lines, last = text.strip().split("\n")
    params_line = ""
    if len(_PARAM.findall(last)) >= 3:
        params_line = last
    else:
        lines.append(last)

    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if not negative and line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)

    p = GenerationParams(prompt="\n".join(prompt), negative_prompt="\n".join(negative))
    if not params_line:
        return p  # nothing to paste: A1111 leaves its UI defaults in place

    raw = parse_param_line(params_line)
    p.schedule_type = raw.get("Schedule type")  # absent ⇒ pre-1.9 text, see GenerationParams
    if "Steps" in raw:
        p.steps = int(_typed("Steps", raw["Steps"], int))
    if "Sampler" in raw:
        p.sampler = raw["Sampler"]
    if "CFG scale" in raw:
        p.cfg_scale = float(_typed("CFG scale", raw["CFG scale"], float))
    if "Seed" in raw:
        p.seed = int(_typed("Seed", raw["Seed"], int))
    if "Size" in raw:
        m = _SIZE.match(raw["Size"])
        if m is None:
            raise ConfigError(f"infotext: 'Size' should look like 512x512, got {raw['Size']!r}")
        p.width, p.height = int(m.group(1)), int(m.group(2))
    for key, attr in (("Clip skip", "clip_skip"), ("Batch size", "batch_size"), ("Batch count", "batch_count")):
        if key in raw:
            setattr(p, attr, int(_typed(key, raw[key], int)))
    p.extra = {k: v for k, v in raw.items() if k not in _TYPED_KEYS}
    return p


def _ordered_pairs(p: GenerationParams) -> list[tuple[str, str]]:
    values: dict[str, str | None] = {
        "Steps": str(p.steps),
        "Sampler": p.sampler,
        "Schedule type": p.schedule_type,
        "CFG scale": _number(p.cfg_scale),
        "Seed": str(p.seed),
        "Size": f"{p.width}x{p.height}",
        # A1111 omits these at their defaults: `"Clip skip": None if clip_skip <= 1 else clip_skip`.
        "Clip skip": str(p.clip_skip) if p.clip_skip > 1 else None,
        "Batch size": str(p.batch_size) if p.batch_size != 1 else None,
        "Batch count": str(p.batch_count) if p.batch_count != 1 else None,
    }
    values.update((k, v) for k, v in p.extra.items() if k not in _TYPED_KEYS)
    order = [k for k in _KNOWN_ORDER if k in values]
    order += [k for k in p.extra if k not in _KNOWN_ORDER and k not in _LAST_KEYS]
    order += [k for k in _LAST_KEYS if k in values]
    return [(k, v) for k in order if (v := values[k]) is not None]


def format_infotext(p: GenerationParams) -> str:
    """Write `p` exactly as A1111's `create_infotext` lays it out (see module docstring)."""
    line = ", ".join(f"{k}: {quote(v)}" for k, v in _ordered_pairs(p))
    negative = f"\n{NEGATIVE_PREFIX} {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{line}".strip()


def png_info(p: GenerationParams) -> PngInfo:
    """A Pillow `PngInfo` carrying the infotext, for `image.save(path, pnginfo=png_info(p))`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, format_infotext(p))
    return info


def read_png_infotext(path: str | Path) -> str | None:
    """The raw infotext of an image written by A1111 or lorakiln, or None if it has none.

    Returns text, not `GenerationParams`, so callers can show it verbatim (A1111's PNG Info tab
    does); pass it to `parse_infotext` to use it.
    """
    from PIL import Image

    with Image.open(path) as image:
        value = image.info.get(PNG_KEY)
    return value if isinstance(value, str) else None
