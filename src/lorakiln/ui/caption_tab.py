"""The Caption tab: kohya_ss's BLIP and WD14 captioning utilities over the project's dataset.

The handlers build the same `BlipOptions` / `TaggerOptions` the `lorakiln caption` flags build
and call `caption_with_blip` / `tag_images`, so the rules are the CLI's: existing captions are
kept unless *overwrite* is ticked, writes are atomic, an unreadable image is reported by name
and skipped, and the model is loaded only if some image needs a caption. Progress comes from
the captioner's own tqdm bar, which gradio mirrors (`gr.Progress(track_tqdm=True)`).

A local caption model must lie in the project or a `--models-dir` folder (`Sandbox`); a hub id
is downloaded as on the CLI.
"""

from __future__ import annotations

from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.ui.dataset_tab import dataset_dir
from lorakiln.ui.sandbox import Sandbox

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
    except LorakilnError as err:
        return "\n".join([*lines, f"error: {err}"])
    return "\n".join([*lines, summary.format()])


def build(box: Sandbox, show_gallery: Any, gallery_out: Any) -> None:
    """The tab inside an open `gr.Blocks`; after a run the Dataset tab's gallery is refreshed."""
    import gradio as gr

    from lorakiln.captioning.blip import BlipOptions
    from lorakiln.captioning.tagger import TaggerOptions

    blip, tagger = BlipOptions(), TaggerOptions()
    with gr.Row():
        method = gr.Radio(["blip", "tagger"], value="blip", label="method",
                          info="blip: one sentence per image; tagger: WD14 booru-style tags")
        model = gr.Textbox(label="model", info="hub id, or a folder in the project or a --models-dir "
                           "(empty: the default model)", scale=3)
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
    report = gr.Textbox(label="captioning", lines=6, interactive=False)

    # gradio shows a progress bar for a handler whose signature has a `gr.Progress` default;
    # track_tqdm mirrors the captioner's own bar into it.
    def run(*settings: Any, progress: Any = gr.Progress(track_tqdm=True)) -> str:  # noqa: B008
        return caption(box, *settings)

    settings = [method, model, prefix, postfix, overwrite, batch, beams, min_len, max_len, sample, top_p, text_prompt,
                threshold, char_threshold, exclude, underscores, rating, by_confidence, separator]
    start.click(run, settings, report).then(show_gallery, None, gallery_out)
