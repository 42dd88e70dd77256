"""The Test tab: AUTOMATIC1111's txt2img and X/Y/Z plot over the project's LoRAs.

The second half of the workflow — load the LoRA in A1111, prompt `<lora:name:0.8>`, paste a
parameters block, compare epochs × strengths — without leaving the UI. Everything goes
through `lorakiln.inference` (the same code as `lorakiln generate` / `lorakiln grid`): the prompt
syntax, samplers, seeds and the PNG infotext are A1111's, so an image made here is redone by
pasting its parameters into A1111 and the other way round.

The base model is loaded once per (model, VAE) and kept for the life of the UI: a generation
after the first one costs only its sampling steps. Images are written under
`<project>/outputs/txt2img` and grids under `<project>/outputs/grids`, with A1111 naming.

The base model, VAE, LoRA and embeddings folders come from the browser, so they go through the
server's `Sandbox`: a built-in or hub id, or a path in the project or the server's folders for
that kind; a `<lora:NAME:…>` name is a file stem, never a path. Messages are in the UI's words
(`wording.ui_words`), and the infotext carries A1111's `Lora hashes` and `TI hashes`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.inference.infotext import GenerationParams, format_infotext, parse_infotext
from lorakiln.ui.sandbox import Sandbox, SandboxError
from lorakiln.ui.train_form import toml_path
from lorakiln.ui.wording import ui_words

#: The txt2img fields in the order the tab's components pass them (`*fields` in the handlers).
FIELDS: tuple[str, ...] = ("prompt", "negative_prompt", "steps", "sampler", "schedule_type", "cfg_scale", "seed",
                           "width", "height", "batch_count", "clip_skip")
_MODELS: dict[tuple[str, str], Any] = {}
#: One generation at a time: LoRAs are hooked into the shared bundle for the length of a request,
#: so a grid and a generate running side by side (gradio threads) would see each other's LoRAs.
_BUSY = threading.Lock()


def run_defaults(box: Sandbox, path: str = "") -> tuple[str, str, str]:
    """(base model, VAE, LoRA folder) from the project's run TOML, for a tab that opens ready to
    test what was just trained. Paths are resolved by the config itself (`load_config`: relative
    to the TOML, hub ids and `toy` kept), so they are what the trainer used."""
    from lorakiln.config.load import load_config

    try:
        file = toml_path(box, path)
        if not file.is_file():
            return "", "", str(box.project / "output")
        cfg = load_config(file)
    except (OSError, ValueError, LorakilnError):
        return "", "", ""
    return cfg.model.pretrained_model, cfg.model.vae or "", cfg.output.output_dir


def loaded_model(model: str, vae: str = "", allow_pickle: bool = False) -> Any:
    """The base model bundle, loaded on first use (the same loader as `lorakiln generate --model`)."""
    from lorakiln.models.configured import load_configured_model

    key = ((model or "").strip(), (vae or "").strip())
    if not key[0]:
        raise LorakilnError("no base model: fill in 'base model' (a single file, a diffusers folder or a hub id)")
    if key not in _MODELS:
        _MODELS.clear()  # one base model in memory at a time: an SDXL bundle is ~7 GB
        _MODELS[key] = load_configured_model(key[0], vae=key[1] or None, allow_pickle=allow_pickle)
    return _MODELS[key]


def lora_names(lora_dir: str) -> list[str]:
    """The `<lora:NAME:…>` names a prompt can use: LoRA files in the folder by stem (A1111's lookup),
    without pivotal-tuning embedding files and the diffusers copy."""
    folder = Path((lora_dir or "").strip()).expanduser()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.safetensors")
                  if not p.stem.endswith("_emb") and p.stem != "pytorch_lora_weights")


def final_lora(names: list[str]) -> str | None:
    """The name to offer first: a run's final LoRA (no `-000004` epoch or `-step…` suffix), else the last."""
    finals = [n for n in names if "-step" not in n and not (n.rsplit("-", 1)[-1].isdigit() and "-" in n)]
    return finals[-1] if finals else (names[-1] if names else None)


def _lora_tag(name: str) -> re.Pattern[str]:
    """Any `<lora:name…>` tag of `name`, with the separator before it (A1111's card regex)."""
    return re.compile(rf"(,\s*)?<lora:{re.escape(name)}(:[^>]*)?>")


def add_lora(prompt: str, name: str, strength: float) -> str:
    """Toggle `<lora:name:strength>` in the prompt, as A1111's extra-networks card does
    (`extraNetworks.js` `tryToRemoveExtraNetworkFromPrompt`): a tag already there is removed,
    otherwise it is appended — a second click never writes a duplicate."""
    if not name:
        return prompt
    pattern = _lora_tag(name)
    if pattern.search(prompt):
        return pattern.sub("", prompt, count=1).strip().removeprefix(",").strip()
    tag = f"<lora:{name}:{strength:g}>"
    return f"{prompt.rstrip()}, {tag}" if prompt.strip() else tag


def set_lora_strength(prompt: str, name: str, strength: float) -> str:
    """Moving the strength slider rewrites the weight of that LoRA's tag in the prompt (and does
    nothing when the prompt has no such tag), so the slider never looks applied when it is not."""
    if not name:
        return prompt
    return _lora_tag(name).sub(lambda m: f"{m.group(1) or ''}<lora:{name}:{strength:g}>", prompt, count=1)


def params_from_fields(*fields: Any) -> GenerationParams:
    """Generation parameters from the components (numbers arrive as floats from gradio)."""
    values = dict(zip(FIELDS, fields, strict=True))
    for key in ("steps", "seed", "width", "height", "batch_count", "clip_skip"):
        values[key] = int(values[key]) if values[key] is not None else getattr(GenerationParams, key)
    values["cfg_scale"] = float(values["cfg_scale"])
    values["schedule_type"] = values["schedule_type"] or None
    return GenerationParams(**values)


def paste_params(text: str) -> tuple[Any, ...]:
    """(message, *fields) from an A1111 parameters block: the keys it has, A1111's defaults for the rest."""
    if not (text or "").strip():  # as A1111's paste button: an empty box changes nothing
        import gradio as gr

        return ("nothing to paste: the parameters box is empty, so the fields are unchanged",
                *(gr.update() for _ in FIELDS))
    params = parse_infotext(text)
    ignored = ", ".join(params.extra)
    msg = "pasted" + (f"; kept but not used here: {ignored}" if ignored else "")
    return (msg, *fields_of(params))


def fields_of(params: GenerationParams) -> list[Any]:
    values = asdict(params)
    values["schedule_type"] = values["schedule_type"] or ""
    return [values[key] for key in FIELDS]


def _error(err: Exception) -> str:
    """A handler's error message in the UI's words (``--model`` is the base model field here)."""
    return "error: " + ui_words(str(err), model_field="base model")


def _images(box: Sandbox) -> Path:
    return box.project / "outputs"


_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]*)", re.IGNORECASE)


def _sources(box: Sandbox, model: str, vae: str, lora_dir: str, embeddings_dir: str,
             texts: list[str]) -> tuple[Any, str | None, str | None]:
    """(model bundle, LoRA folder, embeddings folder) from the form, each through the sandbox;
    embeddings default to the LoRA folder, where a pivotal run writes its `_emb` files."""
    for name in (m for text in texts for m in _LORA_TAG.findall(text or "")):
        if re.search(r"[\\/]|^\.|\.\.", name.strip()):
            raise SandboxError(f"<lora:{name}:…>: a LoRA is named by its file stem in the LoRA folder, not by a path")
    if not (model or "").strip():
        raise LorakilnError("no base model: pick a base model (a file or diffusers folder, a hub id or tiny:sd1)")
    model = box.resolve_model(model, "model", what="base model")
    vae = box.resolve_model(vae, "vae", what="VAE") if (vae or "").strip() else ""
    loras = str(box.resolve_read(lora_dir, "lora", what="LoRA folder")) if (lora_dir or "").strip() else None
    emb = (str(box.resolve_read(embeddings_dir, "embedding", what="embeddings folder"))
           if (embeddings_dir or "").strip() else loras)
    return loaded_model(model, vae, box.allow_pickle), loras, emb


def generate_images(box: Sandbox, model: str, vae: str, lora_dir: str, embeddings_dir: str,
                    *fields: Any) -> tuple[list[Any], str, str]:
    """Render, save the PNGs with their infotext, and return (gallery items, infotext, message)."""
    from lorakiln.inference.generate import generate, save_images

    try:
        params = params_from_fields(*fields)
        if not params.prompt.strip():
            return [], "", "error: the prompt is empty"
        with _BUSY:
            bundle, loras, emb = _sources(box, model, vae, lora_dir, embeddings_dir,
                                          [params.prompt, params.negative_prompt])
            images = generate(bundle, params, lora_dir=loras, embeddings_dir=emb)
    except LorakilnError as err:
        return [], "", _error(err)
    paths = save_images(images, _images(box) / "txt2img")
    items = [(item.image, path.name) for item, path in zip(images, paths, strict=True)]
    return items, format_infotext(images[0].params), f"saved {', '.join(str(p) for p in paths)}"


def epochs_grid(box: Sandbox, model: str, vae: str, lora_dir: str, embeddings_dir: str, x: str, y: str,
                *fields: Any) -> tuple[Any, str]:
    """The epochs × strengths plot of the LoRA folder (`lorakiln grid --compare-epochs`): (grid, message).

    `x`/`y` (A1111 axis text, e.g. ``Prompt S/R: last, last-000001``) replace the preset axes."""
    from lorakiln.inference.grid import epochs_strengths, xyz_grid

    try:
        params = params_from_fields(*fields)
        if not (lora_dir or "").strip():
            raise LorakilnError("pick the LoRA folder whose epochs the grid compares")
        lora_folder = str(box.resolve_read(lora_dir, "lora", what="LoRA folder"))
        # A closed "grid axes" panel sends None: the preset axes apply, as with empty boxes.
        params, x_axis, y_axis = epochs_strengths(lora_folder, params, (x or "").strip() or None,
                                                  (y or "").strip() or None)
        cells = [y_axis.apply(x_axis.apply(params, a), b) for a in x_axis.values for b in y_axis.values]
        texts = [t for cell in cells for t in (cell.prompt, cell.negative_prompt)]  # S/R can write a tag
        with _BUSY:
            bundle, loras, emb = _sources(box, model, vae, lora_folder, embeddings_dir, texts)
            grids = xyz_grid(bundle, replace(params, batch_count=1), x_axis, y_axis, lora_dir=loras,
                             embeddings_dir=emb, progress=True)
    except LorakilnError as err:
        return None, _error(err)
    folder = _images(box) / "grids"
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob("xyz_grid-*.png")))
    path = folder / f"xyz_grid-{number:04d}.png"
    grid, cells = grids[0]
    grid.save(path)
    return grid, (f"{len(x_axis.values)} × {len(y_axis.values)} cells, seed {cells[0].params.seed}; "
                  f"saved {path}")


def lora_choices(box: Sandbox, folder: str) -> list[str]:
    """`lora_names` of a folder the sandbox allows (none for any other folder: a listing is a read too)."""
    try:
        return lora_names(str(box.resolve_read(folder, "lora", what="LoRA folder"))) if (folder or "").strip() else []
    except SandboxError:
        return []


def build(box: Sandbox) -> tuple[Any, Any]:
    """The tab inside an open `gr.Blocks`, bound to the server's sandbox; returns (defaults
    function, its outputs) for the app's load."""
    import gradio as gr

    from lorakiln.inference.samplers import sampler_names, schedule_type_names
    from lorakiln.ui.app import bind

    def pick(label: str, kind: str, info: str, scale: int) -> Any:
        return gr.Dropdown(["", *box.listing(kind)], value="", label=label, allow_custom_value=True, scale=scale,
                           info=info)

    defaults = GenerationParams()
    with gr.Row():
        model = pick("base model", "model", "a file or diffusers folder of the project or the server's models "
                     "folders, a hub id, or tiny:sd1 (default: the run TOML's model.pretrained_model)", 3)
        vae = pick("VAE", "vae", "optional", 2)
        lora_dir = pick("LoRA folder", "lora", "where <lora:NAME:…> files are found: the project or the server's LoRA "
                        "folders (default: the run TOML's output folder)", 3)
        emb_dir = pick("embeddings folder", "embedding", "textual-inversion files (empty: the LoRA folder)", 2)
    with gr.Row():
        lora = gr.Dropdown([], label="LoRA", allow_custom_value=True, scale=3)
        strength = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="strength", scale=3)
        add = gr.Button("add / remove in prompt", scale=1)
        refresh = gr.Button("refresh LoRAs", scale=1)
        from_toml = gr.Button("from run TOML", scale=1)
    prompt = gr.Textbox(label="prompt", lines=2, placeholder="photo of zwx, <lora:last:0.8>")
    negative = gr.Textbox(label="negative prompt", lines=1)
    with gr.Row():
        steps = gr.Number(label="steps", value=defaults.steps, precision=0)
        sampler = gr.Dropdown(sampler_names(), label="sampler", value=defaults.sampler)
        schedule = gr.Dropdown(schedule_type_names(), label="schedule type", value=defaults.schedule_type)
        cfg = gr.Number(label="CFG scale", value=defaults.cfg_scale)
        seed = gr.Number(label="seed", value=defaults.seed, precision=0, info="-1: random")
    with gr.Row():
        width = gr.Number(label="width", value=defaults.width, precision=0)
        height = gr.Number(label="height", value=defaults.height, precision=0)
        batch = gr.Number(label="batch count", value=defaults.batch_count, precision=0)
        clip_skip = gr.Number(label="clip skip", value=defaults.clip_skip, precision=0)
    with gr.Accordion("paste A1111 parameters", open=False):
        pasted = gr.Textbox(label="parameters", lines=4, placeholder="photo of zwx\nNegative prompt: …\n"
                            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512")
        paste = gr.Button("apply")
    with gr.Row():
        run = gr.Button("generate", variant="primary")
        grid_button = gr.Button("epochs × strengths grid")
    with gr.Accordion("grid axes (empty: the LoRA folder's epochs × strengths 1.0 … 0.5)", open=False):
        x = gr.Textbox(label="X axis", placeholder="Prompt S/R: last, last-000001, last-000002")
        y = gr.Textbox(label="Y axis", placeholder="Prompt S/R: 1.0, 0.8, 0.6")
    message = gr.Markdown(elem_id="test-message")
    gallery = gr.Gallery(label="images", columns=4, height=360, elem_id="test-images", object_fit="contain")
    infotext = gr.Textbox(label="parameters of the first image", lines=3, interactive=False)
    grid = gr.Image(label="grid", type="pil", elem_id="test-grid")

    fields = [prompt, negative, steps, sampler, schedule, cfg, seed, width, height, batch, clip_skip]

    def refresh_loras(folder: str) -> Any:
        names = lora_choices(box, folder)
        return gr.Dropdown(choices=names, value=final_lora(names))

    def load_defaults() -> tuple[Any, ...]:
        base, vae_path, loras = run_defaults(box)
        return base, vae_path, loras, refresh_loras(loras)

    refresh.click(refresh_loras, lora_dir, lora)
    from_toml.click(load_defaults, None, [model, vae, lora_dir, lora])
    add.click(add_lora, [prompt, lora, strength], prompt)
    strength.change(set_lora_strength, [prompt, lora, strength], prompt)
    paste.click(paste_params, pasted, [message, *fields])
    run.click(bind(generate_images, box), [model, vae, lora_dir, emb_dir, *fields], [gallery, infotext, message])
    grid_button.click(bind(epochs_grid, box), [model, vae, lora_dir, emb_dir, x, y, *fields], [grid, message])
    return load_defaults, [model, vae, lora_dir, lora]
