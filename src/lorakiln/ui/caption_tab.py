"""The Caption tab: kohya_ss's BLIP and WD14 captioning utilities over the project's dataset.

The handlers build the same `BlipOptions` / `TaggerOptions` the `lorakiln caption` flags build
and call `caption_with_blip` / `tag_images`, so the rules are the CLI's: existing captions are
kept unless *overwrite* is ticked, writes are atomic, an unreadable image is reported by name
and skipped, and the model is loaded only if some image needs a caption. Progress comes from
the captioner's own tqdm bar, which gradio mirrors (`gr.Progress(track_tqdm=True)`).

A local caption model must lie in the project or one of the server's models folders
(`Sandbox`); the **caption model** field offers the folders there that hold one. A hub id is
resolved as on the CLI (`captioning.model_source`): from the local Hugging Face cache, else
downloaded only when the hub answers within seconds. A model that is not on this machine and
cannot be downloaded comes back in seconds as a message (`wording.missing_model_words`) that
says which folder to copy it into. Every message is in the UI's words (`wording.ui_words`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.ui.dataset_tab import dataset_dir
from lorakiln.ui.sandbox import PROTECTED, Sandbox, SandboxError
from lorakiln.ui.wording import missing_model_words, ui_words

#: The tab's settings in the order its components pass them (`*settings`).
SETTINGS: tuple[str, ...] = (
    "method", "model", "prefix", "postfix", "overwrite", "batch_size",
    "num_beams", "min_length", "max_length", "sample", "top_p", "text_prompt",
    "general_threshold", "character_threshold", "exclude_tags", "replace_underscores", "include_rating",
    "sort_by_confidence", "tag_separator",
)
_BLIP = ("num_beams", "min_length", "max_length", "sample", "top_p", "text_prompt")
_TAGGER = ("general_threshold", "character_threshold", "exclude_tags", "replace_underscores", "include_rating",
           "sort_by_confidence", "tag_separator")
_INTS = ("batch_size", "num_beams", "min_length", "max_length")
#: A folder holding one of these is a caption model: BLIP (transformers' config.json) or a WD14
#: tagger (model.onnx); a diffusers pipeline (model_index.json) is a base model, not one.
_MARKERS = ("config.json", "model.onnx")
_LISTED = 200


def _subfolders(root: Path, depth: int = 2) -> list[Path]:
    """Folders up to `depth` levels below `root`, hidden ones and the UI's own records skipped."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            try:
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                              and p.name not in PROTECTED)
            except OSError:
                continue
        found += nxt
        level = nxt
    return found


def caption_models(box: Sandbox) -> list[tuple[str, str]]:
    """(label, folder) of every caption model in the project and the server's models folders,
    for the **caption model** drop-down: a model copied there shows up after *refresh models*.
    A folder whose real location leaves those folders (a symlink) is not offered."""
    found: list[tuple[str, str]] = []
    for root in box.read_roots("model"):
        for folder in _subfolders(root):
            if not any((folder / m).is_file() for m in _MARKERS) or (folder / "model_index.json").is_file():
                continue
            try:
                path = box.resolve_read(folder, "model")
            except SandboxError:
                continue
            found.append((f"{folder.relative_to(root).as_posix()}  ({root})", str(path)))
            if len(found) >= _LISTED:
                return found
    return found


def model_choices(box: Sandbox) -> list[tuple[str, str]]:
    """The drop-down's choices: the method's default model (value ""), then `caption_models`."""
    return [("default model of the method", ""), *caption_models(box)]


def _model(box: Sandbox, value: str | None) -> str:
    """The caption model: empty (the default), a hub id, or a local folder inside the roots."""
    value = (value or "").strip()
    return box.resolve_model(value, "model", what="caption model") if value else ""


def _options(settings: dict[str, Any]) -> tuple[str, Any]:
    """(method, options dataclass) from the form; the model defaults to the CLI's."""
    from lorakiln.captioning.blip import DEFAULT_BLIP_MODEL, BlipOptions
    from lorakiln.captioning.tagger import DEFAULT_TAGGER_MODEL, TaggerOptions, parse_tag_list

    method = settings["method"]
    for key in _INTS:
        settings[key] = int(settings[key])
    common = {"prefix": settings["prefix"] or "", "postfix": settings["postfix"] or "",
              "batch_size": settings["batch_size"]}
    if method == "blip":
        return method, BlipOptions(model=(settings["model"] or "").strip() or DEFAULT_BLIP_MODEL, **common,
                                   **{k: settings[k] for k in _BLIP})
    if method == "tagger":
        tagger = {k: settings[k] for k in _TAGGER} | {"exclude_tags": parse_tag_list(settings["exclude_tags"])}
        return method, TaggerOptions(model=(settings["model"] or "").strip() or DEFAULT_TAGGER_MODEL, **common,
                                     **tagger)
    raise LorakilnError(f"unknown captioning method {method!r}; valid: blip, tagger")


def caption(box: Sandbox, *settings: Any) -> str:
    """Caption `<project>/train` with the form's settings; the CLI's summary (or ``error: …``)."""
    from lorakiln.captioning.blip import caption_with_blip
    from lorakiln.captioning.files import OutputOptions
    from lorakiln.captioning.model_source import ModelUnavailable
    from lorakiln.captioning.tagger import tag_images

    values = dict(zip(SETTINGS, settings, strict=True))
    root = dataset_dir(box)
    if not root.is_dir():
        return f"error: {root} does not exist yet: import images in the Dataset tab first"
    lines: list[str] = []
    try:
        values["model"] = _model(box, values["model"])
        method, options = _options(values)
        output = OutputOptions(overwrite=bool(values["overwrite"]), progress=True)
        run = caption_with_blip if method == "blip" else tag_images
        summary = run(root, options, output, log=lines.append)
    except ModelUnavailable as err:  # in seconds, saying where to put the model
        return "\n".join([*map(ui_words, lines), "error: " + missing_model_words(err, box.read_roots("model"))])
    except LorakilnError as err:
        return ui_words("\n".join([*lines, f"error: {err}"]))
    return ui_words("\n".join([*lines, summary.format()]))


def build(box: Sandbox, show_gallery: Any, gallery_out: Any) -> None:
    """The tab inside an open `gr.Blocks`; after a run the Dataset tab's gallery is refreshed."""
    import gradio as gr

    from lorakiln.captioning.blip import BlipOptions
    from lorakiln.captioning.tagger import TaggerOptions

    blip, tagger = BlipOptions(), TaggerOptions()
    with gr.Row():
        method = gr.Radio(["blip", "tagger"], value="blip", label="method",
                          info="blip: one sentence per image; tagger: WD14 booru-style tags")
        model = gr.Dropdown(model_choices(box), value="", label="caption model", allow_custom_value=True,
                            elem_id="caption-model", scale=3,
                            info="a model folder in the project or the server's models folders, or a Hugging Face "
                            "hub id such as Salesforce/blip-image-captioning-large (downloaded when this machine "
                            "can reach the hub)")
        refresh = gr.Button("refresh models", elem_id="caption-model-refresh", scale=0)
    with gr.Row():
        prefix = gr.Textbox(label="prefix", placeholder="photo of zwx, ", info="text before every caption")
        postfix = gr.Textbox(label="postfix", info="text after every caption")
        overwrite = gr.Checkbox(label="overwrite existing captions", value=False)
        batch = gr.Number(label="batch size", value=1, precision=0)
    with gr.Accordion("BLIP", open=True), gr.Row():
        beams = gr.Number(label="beams", value=blip.num_beams, precision=0)
        min_len = gr.Number(label="min length", value=blip.min_length, precision=0,
                            info="tokens, counting BLIP's 4 prompt tokens")
        max_len = gr.Number(label="max length", value=blip.max_length, precision=0)
        sample = gr.Checkbox(label="nucleus sampling", value=blip.sample)
        top_p = gr.Number(label="top p", value=blip.top_p)
        text_prompt = gr.Textbox(label="text prompt", value=blip.text_prompt, info="cut from every caption")
    with gr.Accordion("WD14 tagger", open=False):
        with gr.Row():
            threshold = gr.Number(label="threshold", value=tagger.general_threshold)
            char_threshold = gr.Number(label="character threshold", value=tagger.character_threshold)
            exclude = gr.Textbox(label="exclude tags", placeholder="1girl, solo")
            separator = gr.Textbox(label="tag separator", value=tagger.tag_separator)
        with gr.Row():
            underscores = gr.Checkbox(label="long_hair → long hair", value=tagger.replace_underscores)
            rating = gr.Checkbox(label="rating tag first", value=tagger.include_rating)
            by_confidence = gr.Checkbox(label="most confident first", value=tagger.sort_by_confidence)
    start = gr.Button("caption images", variant="primary")
    report = gr.Textbox(label="captioning", lines=6, interactive=False, elem_id="caption-report")

    # gradio shows a progress bar for a handler whose signature has a `gr.Progress` default;
    # track_tqdm mirrors the captioner's own bar into it.
    def run(*settings: Any, progress: Any = gr.Progress(track_tqdm=True)) -> str:  # noqa: B008
        return caption(box, *settings)

    settings = [method, model, prefix, postfix, overwrite, batch, beams, min_len, max_len, sample, top_p, text_prompt,
                threshold, char_threshold, exclude, underscores, rating, by_confidence, separator]
    start.click(run, settings, report).then(show_gallery, None, gallery_out)
    refresh.click(lambda: gr.Dropdown(choices=model_choices(box)), None, model)
