"""X/Y/Z plots as AUTOMATIC1111 draws them: one labelled grid image per Z value.

Axes (A1111 names): `Prompt S/R` (the first value is searched in the prompt and each value
replaces it — the kohya_ss walkthrough's epochs × strengths plot is two of these), `Seed`, `Steps`,
`CFG Scale`, `Sampler`, `Schedule type`, `Size`, `Clip skip`, `Negative S/R`. The base model is
loaded once and LoRAs are switched by strength/hooks (`LoRASet`), never reloaded. Every cell uses
the same seed unless Seed is an axis.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from lorakiln.errors import ConfigError
from lorakiln.inference.generate import GeneratedImage, LoRASet, generate
from lorakiln.inference.infotext import GenerationParams

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle


def _sr(field: str) -> Callable[[GenerationParams, str, str], GenerationParams]:
    def apply(p: GenerationParams, value: str, first: str) -> GenerationParams:
        text = getattr(p, field)
        if first not in text:
            raise ConfigError(f"{'Prompt' if field == 'prompt' else 'Negative'} S/R: {first!r} is not in "
                              f"the {field.replace('_', ' ')} {text!r}; the first value must appear in it")
        return replace(p, **{field: text.replace(first, value)})
    return apply


def _size(p: GenerationParams, value: str, first: str) -> GenerationParams:
    w, _, h = value.lower().partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ConfigError(f"Size axis value {value!r} is not WxH such as 512x768")
    return replace(p, width=int(w), height=int(h))


def _typed(field: str, kind: type) -> Callable[[GenerationParams, str, str], GenerationParams]:
    def apply(p: GenerationParams, value: str, first: str) -> GenerationParams:
        try:
            return replace(p, **{field: kind(value)})
        except ValueError:
            raise ConfigError(f"axis value {value!r} is not a valid {field}") from None
    return apply


AXES: dict[str, Callable[[GenerationParams, str, str], GenerationParams]] = {
    "Prompt S/R": _sr("prompt"), "Negative S/R": _sr("negative_prompt"), "Seed": _typed("seed", int),
    "Steps": _typed("steps", int), "CFG Scale": _typed("cfg_scale", float), "Sampler": _typed("sampler", str),
    "Schedule type": _typed("schedule_type", str), "Size": _size, "Clip skip": _typed("clip_skip", int),
}  # fmt: skip


@dataclass(frozen=True)
class Axis:
    """An axis type and its values; `labels` (default: the values) are what the grid prints."""

    kind: str
    values: tuple[str, ...]
    labels: tuple[str, ...] | None = None

    @property
    def names(self) -> list[str]:
        return list(self.labels or self.values)

    def apply(self, params: GenerationParams, value: str) -> GenerationParams:
        return AXES[self.kind](params, value, self.values[0])


def parse_axis(text: str) -> Axis:
    """`"Prompt S/R: last, last-000001"` → Axis; values are comma-separated (A1111's syntax)."""
    kind, sep, values = text.partition(":")
    names = {k.lower(): k for k in AXES}
    key = names.get(kind.strip().lower())
    if not sep or key is None:
        near = difflib.get_close_matches(kind.strip(), list(AXES), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"axis {text!r} is not 'Type: v1, v2, …'{hint}; axis types: {', '.join(AXES)}")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not items:
        raise ConfigError(f"axis {text!r} has no values")
    return Axis(key, items)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def draw_grid(cells: list[list[Image.Image]], x_labels: list[str], y_labels: list[str], title: str = "") -> Image.Image:
    """Cells in rows (Y) and columns (X) with labels above the columns and left of the rows."""
    w, h = cells[0][0].size
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(12, w // 14)
    widest = max(x_labels, key=lambda t: measure.textlength(t, font=_font(size)), default="")
    while size > 8 and measure.textlength(widest, font=_font(size)) > w - 4:  # column labels fit their cell
        size -= 1
    font = _font(size)
    left = max((measure.textlength(t, font=font) for t in y_labels), default=0) + 16 if any(y_labels) else 0
    top = (font.size if hasattr(font, "size") else 12) * 2 + 8
    top += top if title else 0
    grid = Image.new("RGB", (int(left) + w * len(x_labels), top + h * len(y_labels)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((grid.width / 2, top / 4), title, fill="black", font=font, anchor="mm")
    for i, label in enumerate(x_labels):
        draw.text((left + w * i + w / 2, top - top / 4), label, fill="black", font=font, anchor="mm")
    for j, label in enumerate(y_labels):
        draw.text((left / 2, top + h * j + h / 2), label, fill="black", font=font, anchor="mm")
    for j, row in enumerate(cells):
        for i, cell in enumerate(row):
            grid.paste(cell, (int(left) + w * i, top + h * j))
    return grid


def xyz_grid(bundle: ModelBundle, params: GenerationParams, x: Axis, y: Axis | None = None, z: Axis | None = None,
             *, lora_dir: str | Path | None = None, embeddings_dir: str | Path | None = None,
             progress: bool = True) -> list[tuple[Image.Image, list[GeneratedImage]]]:
    """One (grid image, cells) per Z value. Seed −1 is fixed once so every cell shares it."""
    import random

    if params.seed < 0:
        params = replace(params, seed=random.randrange(2**32))
    params = replace(params, batch_size=1, batch_count=1)
    y_values, z_values = (y.values if y else ("",)), (z.values if z else ("",))
    loras = LoRASet(bundle, lora_dir)
    out = []
    try:
        with tqdm(total=len(x.values) * len(y_values) * len(z_values), desc="grid", disable=not progress) as bar:
            for zv in z_values:
                rows, made = [], []
                for yv in y_values:
                    row = []
                    for xv in x.values:
                        p = x.apply(params, xv)
                        p = y.apply(p, yv) if y else p
                        p = z.apply(p, zv) if z else p
                        image = generate(bundle, p, embeddings_dir=embeddings_dir, loras=loras)[0]
                        row.append(image.image)
                        made.append(image)
                        bar.update(1)
                    rows.append(row)
                title = f"{z.kind}: {z.names[z.values.index(zv)]}" if z else ""
                out.append((draw_grid(rows, x.names, y.names if y else [""], title), made))
    finally:
        loras.close()
    return out


def epoch_files(output_dir: str | Path) -> tuple[str, list[str]]:
    """(final stem, stems in epoch order ending with the final) of a training output folder:
    `last-000001 … last-000004, last` as the kohya_ss walkthrough lists them for its X axis."""
    folder = Path(output_dir)
    files = sorted(p.stem for p in folder.glob("*.safetensors") if not p.stem.endswith("_emb"))
    numbered = [s for s in files if s.rsplit("-", 1)[-1].isdigit() and len(s.rsplit("-", 1)[-1]) == 6]
    finals = [s for s in files if s not in numbered and "-step" not in s and s != "pytorch_lora_weights"]
    if len(finals) != 1:
        raise ConfigError(f"{folder} should hold one final LoRA and its -000001… epoch files; found "
                          f"{', '.join(files) or 'no .safetensors'}")
    return finals[0], [*numbered, finals[0]]


def _pairs_embeddings(output_dir: str | Path, prompt: str, final: str, names: tuple[str, ...]) -> bool:
    """Whether the prompt uses the final embedding file and names `final` only in it and the
    `<lora:>` tag (so swapping the stem renames nothing else), and every epoch has its file."""
    uses = prompt.count(f"<lora:{final}:") + prompt.count(f"{final}_emb")
    return (f"{final}_emb" in prompt and prompt.count(final) == uses
            and all((Path(output_dir) / f"{n}_emb.safetensors").is_file() for n in names))


#: The kohya_ss walkthrough's Y axis for comparing epochs: LoRA strengths from full to half.
STRENGTHS_AXIS = "Prompt S/R: 1.0, 0.9, 0.8, 0.7, 0.6, 0.5"


def epochs_strengths(output_dir: str | Path, params: GenerationParams, x: str | None = None,
                     y: str | None = None) -> tuple[GenerationParams, Axis, Axis]:
    """The epochs × strengths comparison plot of a training output folder: (params, X, Y).

    X runs through the epoch files in training order, the final one last, as the kohya_ss +
    AUTOMATIC1111 LoRA walkthrough lists them. The prompt names the final LoRA (appended at 1.0 when missing); A1111's Prompt S/R
    searches for its first value, so the returned prompt names the first epoch's file instead
    (with `x` given, the prompt is left as it is). Y swaps the strength 1.0 for 0.9 … 0.5, whatever
    strength the tag had (an A1111 paste writes `<lora:name:1>`; Y sets every cell's strength). Both
    replace inside the `<lora:…>` tag only (labelled with the bare names): a plain S/R of "zwx" would also rename the trigger word whenever the LoRA is
    named after it, as the quickstart's is. A pivotal-tuning run saves each epoch's embeddings
    beside its LoRA (`zwx-000002_emb`); when the prompt uses `zwx_emb` and names the final stem
    nowhere else, X swaps the stem in both, so each column shows that epoch's pair, as a plain
    A1111 S/R of the stem does. `x`/`y` (A1111 syntax, A1111 semantics) replace either axis.
    The CLI's `grid --compare-epochs` and the UI's Test tab both come here.
    """
    final, stems = epoch_files(output_dir)
    if f"<lora:{final}:" not in params.prompt:
        params = replace(params, prompt=f"{params.prompt}, <lora:{final}:1.0>")
    names = tuple(stems)  # training order, the final file last
    if x:
        x_axis = parse_axis(x)
    elif _pairs_embeddings(output_dir, params.prompt, final, names):
        params = replace(params, prompt=params.prompt.replace(final, names[0]))
        x_axis = Axis("Prompt S/R", names)
    else:
        params = replace(params, prompt=params.prompt.replace(f"<lora:{final}:", f"<lora:{names[0]}:"))
        x_axis = Axis("Prompt S/R", tuple(f"<lora:{n}:" for n in names), names)
    if y:
        return params, x_axis, parse_axis(y)
    strengths = parse_axis(STRENGTHS_AXIS).values
    # Y sets the strength of every cell, so the tag's own strength (A1111 writes `<lora:x:1>`, an
    # A1111 paste may say 0.8) is only the S/R anchor: it is written as the axis's first value.
    tag = re.compile(rf"<lora:({re.escape(names[0])}|{re.escape(final)}):[-+0-9.eE]+>")
    if not tag.search(params.prompt):  # a tag with per-part strengths (`:te:unet`): plain A1111 S/R
        return params, x_axis, parse_axis(STRENGTHS_AXIS)  # A1111's error names the first value
    params = replace(params, prompt=tag.sub(lambda m: f"<lora:{m.group(1)}:{strengths[0]}>", params.prompt))
    return params, x_axis, Axis("Prompt S/R", tuple(f":{v}>" for v in strengths), strengths)

