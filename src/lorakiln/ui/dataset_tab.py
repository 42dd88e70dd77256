"""The Dataset tab: import photos, review and edit captions, check the folder and the trigger word.

Handlers are plain functions (the server's `Sandbox` first, then values) so tests call them
without a browser; each one calls the same package functions as `lorakiln dataset …`
(`prep.init.init_dataset`, `prep.check.check_dataset`, `data.token_check.check_token`). Errors
come back as a message in the tab rather than as exceptions, because a web form has no stderr.

The dataset of a project is always `<project>/train` (the run TOML's `data.train_data_dir`
defaults to it), and captions are the same-stem `.txt` files next to the images. Every write
stays there: a folder import reads only from the project and the server's photo folders
(``--data-dir``), uploads are stored under a plain file name (``../../x.png`` becomes ``x.png``),
and the trigger and class words, which become a folder name, may not contain a path. Messages
and reports are shown in the UI's words (`wording.ui_words`), never with CLI flags.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from lorakiln.data.images import open_image_rgb
from lorakiln.errors import LorakilnError
from lorakiln.ui.sandbox import Sandbox, SandboxError, safe_basename
from lorakiln.ui.wording import ui_words

CAPTION_EXT = ".txt"
THUMB_SIDE = 256


def dataset_dir(box: Sandbox) -> Path:
    """The project's training folder (not created here: only an import creates it)."""
    return box.project / "train"


def _check_words(token: str, class_token: str) -> None:
    """The words become the folder `<repeats>_<token>[ <class>]` inside `<project>/train`, so a
    separator or `..` in them would name a folder elsewhere."""
    for label, word in (("trigger word", token), ("class word", class_token)):
        if any(c in word for c in "/\\\x00") or ".." in word or word.startswith("."):
            raise SandboxError(f"{label} {word!r} contains a path ('/', a backslash, '..' or a leading '.'); "
                               "use a plain word such as zwx")


def _repeats(value: Any) -> int | str:
    text = str(value).strip() or "auto"
    if text == "auto":
        return "auto"
    try:
        return int(float(text))
    except ValueError:
        raise LorakilnError(f"repeats {value!r} is neither a whole number nor 'auto'") from None


def _token_text(token: str) -> str:
    from lorakiln.data.token_check import check_token

    try:
        return check_token(token).format()
    except ValueError as err:
        return f"token {token!r}: {err}"


def _import(box: Sandbox, source: Path, token: str, class_token: str, repeats: Any) -> str:
    from lorakiln.prep.init import init_dataset

    token, class_token = (token or "").strip(), (class_token or "").strip()
    try:
        _check_words(token, class_token)
        result = init_dataset(source, dataset_dir(box), token, class_token=class_token or None,
                              repeats=_repeats(repeats))  # type: ignore[arg-type]
        box.resolve_write(result.folder, what="dataset folder")  # the words were checked: a last guard
    except LorakilnError as err:
        return f"error: {ui_words(str(err))}"
    return ui_words(result.format() + "\n" + _token_text(token))


def import_from_path(box: Sandbox, source: str, token: str, class_token: str = "", repeats: Any = "auto") -> str:
    """`dataset init` from a folder of the project or a `--data-dir` into `<project>/train`
    (the source is only read)."""
    if not (source or "").strip():
        return "error: enter the folder that holds your photos"
    try:
        folder = box.resolve_read(source, "data", what="photo folder")
    except LorakilnError as err:
        return f"error: {ui_words(str(err))}"
    return _import(box, folder, token, class_token, repeats)


def refuse_non_images(files: list[str]) -> str | None:
    """Why this upload batch is refused (the first file Pillow cannot read, by its name), or None.

    Checked before anything is copied, so a batch with a stray document imports nothing rather
    than half of itself."""
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as exc:  # Pillow raises many types for non-images and broken files
            return (f"error: {Path(path).name} is not an image Pillow can read ({type(exc).__name__}); "
                    "nothing was imported from this upload")
    return None


def import_uploads(box: Sandbox, files: list[Any] | None, token: str, class_token: str = "",
                   repeats: Any = "auto") -> str:
    """Import uploaded images the same way as a folder import.

    `files` are gradio's copies in its upload folder (gradio refuses API calls naming any other
    server file). Each is stored under `safe_basename` of its name, so no name can place a
    file outside `<project>/train`."""
    paths = [str(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        return "error: choose one or more images to upload first"
    refused = refuse_non_images(paths)
    if refused:
        return refused
    with tempfile.TemporaryDirectory(prefix="lorakiln-upload-") as tmp:
        for path in paths:  # keep the uploaded names: they become the dataset's file names
            try:
                name = safe_basename(path)
            except SandboxError as err:
                return f"error: {ui_words(str(err))}"
            target = Path(tmp) / name
            for n in range(1, 1000):
                if not target.exists():
                    break
                target = target.with_name(f"{Path(name).stem}-{n}{Path(name).suffix}")
            shutil.copy2(path, target)
        return _import(box, Path(tmp), token, class_token, repeats)


def dataset_images(box: Sandbox) -> list[Path]:
    """The images of `<project>/train`, as the caption tools find them."""
    from lorakiln.data.files import list_images

    root = dataset_dir(box)
    return list_images(root, follow_links=True) if root.is_dir() else []


def read_caption(image: str | Path) -> str:
    """The caption of `image` ("" when it has none)."""
    from lorakiln.data.files import read_caption as read_caption_file

    caption = read_caption_file(Path(image), CAPTION_EXT)
    if caption.error:
        raise LorakilnError(caption.error)
    return caption.text or ""


def gallery(box: Sandbox) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """Thumbnails with captions for the gallery, and the image paths in the same order.

    Thumbnails (not paths) go to the browser so any project folder works without widening the
    folders gradio may serve."""
    items, paths = [], []
    for path in dataset_images(box):
        try:
            thumb = open_image_rgb(path)  # the trainer's conversion: a 16-bit PNG shows as trained
            thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
            caption = read_caption(path)
        except Exception as exc:  # an unreadable file is shown by name, not hidden
            thumb, caption = Image.new("RGB", (THUMB_SIDE // 4, THUMB_SIDE // 4), (90, 0, 0)), f"unreadable: {exc}"
        items.append((thumb, f"{path.name}: {caption}"))
        paths.append(str(path))
    return items, paths


def select_image(paths: list[str], index: int | None) -> tuple[str, str, str]:
    """The image at gallery `index`: (its path, its caption, a message)."""
    if index is None or not 0 <= index < len(paths or []):
        return "", "", "select an image in the gallery"
    try:
        return paths[index], read_caption(paths[index]), ""
    except LorakilnError as err:
        return paths[index], "", f"error: {ui_words(str(err))}"


def save_caption(box: Sandbox, image: str, text: str) -> str:
    """Write `text` as the caption of `image`, atomically: a failed write keeps the old caption.
    `image` comes from the browser, so it is resolved and must be an image of `<project>/train`."""
    from lorakiln.atomic import write_text_atomic

    if not image:
        return "error: select an image first"
    root = dataset_dir(box).resolve()
    try:
        path = box.resolve_write(image, what="image")
    except SandboxError:
        return f"error: {image} is not an image of this project's dataset ({root})"
    if not path.is_file() or root not in path.parents:
        return f"error: {image} is not an image of this project's dataset ({root})"
    caption = path.with_suffix(CAPTION_EXT)
    try:
        write_text_atomic(caption, text.strip())
    except OSError as err:
        return f"error: {caption} could not be written ({err.strerror or err}); the old caption is kept"
    return f"saved {caption}"


def check_report(box: Sandbox, token: str = "") -> str:
    """`lorakiln dataset check` of `<project>/train`, with the project's run TOML when there is one."""
    from lorakiln.config.load import build_config
    from lorakiln.prep.check import check_dataset
    from lorakiln.training.plan import lint_options

    folder = dataset_dir(box)
    override = [f"data.train_data_dir={json.dumps(str(folder.resolve()))}"]
    run_toml = box.project / "run.toml"
    try:
        if run_toml.is_file():  # its other paths (e.g. sample prompts) may be read: checked like a run's
            from lorakiln.ui.run_guard import check_run

            cfg = check_run(box, run_toml, override)
        else:  # no run TOML yet: the trainer's defaults, a placeholder model (nothing is loaded)
            cfg = build_config({"model": {"pretrained_model": "tiny:sd1"}, "data": {}}, overrides=override)
        report = check_dataset(cfg, token=(token or "").strip() or None, options=lint_options(cfg))
    except LorakilnError as err:
        return f"error: {ui_words(str(err))}"
    return ui_words(report.format())


def token_report(token: str) -> str:
    """`lorakiln dataset token` for the trigger word."""
    token = (token or "").strip()
    return ui_words(_token_text(token)) if token else "enter a trigger word"


def build(box: Sandbox) -> tuple[Any, Any]:
    """The tab's components and events, inside an open `gr.Blocks`, bound to the server's sandbox.
    Returns (gallery function, its outputs) for the app's load event."""
    import gradio as gr

    from lorakiln.ui.app import bind

    show = bind(gallery, box)

    paths = gr.State([])
    with gr.Row():
        token = gr.Textbox(label="trigger word", placeholder="zwx", info="a rare word the LoRA binds to")
        class_token = gr.Textbox(label="class word", placeholder="man", info="optional (folder `N_token class`)")
        repeats = gr.Textbox(label="repeats", value="auto", info="a number, or auto (lands 1500–2000 steps)")
    with gr.Accordion("import images into <project>/train", open=True):
        with gr.Row():
            source = gr.Textbox(label="folder on this machine", scale=4, info="in the project or the server's photo folders: "
                                + ", ".join(map(str, box.read_roots("data"))))
            from_path = gr.Button("import folder", scale=1)
        uploads = gr.File(label="or upload images", file_count="multiple", type="filepath")
        from_upload = gr.Button("import uploads")
        import_log = gr.Textbox(label="import", lines=6, interactive=False)
    refresh = gr.Button("refresh gallery")
    pictures = gr.Gallery(label="dataset", columns=6, height=420, allow_preview=False, elem_id="dataset-gallery")
    with gr.Row():
        chosen = gr.Textbox(label="image", interactive=False, scale=2)
        caption = gr.Textbox(label="caption", lines=3, scale=5)
        save = gr.Button("save caption", scale=1)
    caption_msg = gr.Markdown()
    with gr.Row():
        check = gr.Button("check dataset")
        check_tok = gr.Button("check trigger word")
    report = gr.Textbox(label="report", lines=14, interactive=False)

    def on_select(current: list[str], evt: gr.SelectData) -> tuple[str, str, str]:
        return select_image(current, evt.index if isinstance(evt.index, int) else None)

    # gradio finds the event argument by its annotation object; `from __future__ import annotations`
    # leaves a string that names a local import, so set the object itself.
    on_select.__annotations__["evt"] = gr.SelectData

    options = [token, class_token, repeats]
    from_path.click(bind(import_from_path, box), [source, *options], import_log).then(show, None, [pictures, paths])
    from_upload.click(bind(import_uploads, box), [uploads, *options], import_log).then(show, None, [pictures, paths])
    refresh.click(show, None, [pictures, paths])
    pictures.select(on_select, paths, [chosen, caption, caption_msg])
    save.click(bind(save_caption, box), [chosen, caption], caption_msg).then(show, None, [pictures, paths])
    check.click(bind(check_report, box), [token], report)
    check_tok.click(token_report, token, report)
    return show, [pictures, paths]
