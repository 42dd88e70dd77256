"""The web UI's layout: the server's folders on top (read-only), then the Dataset, Caption,
Train, Test and Tools tabs (the workflow's order: gather images, caption, train, try the LoRA,
fix it up).

Only layout lives here; each tab's behaviour is in plain handler functions (`dataset_tab`,
`caption_tab`, `train_tab`, `generate_tab`, `tools_tab`) whose first argument is the server's
`Sandbox`. The browser never sends a project folder: handlers are bound to the sandbox here
(`bind`), so the API gradio derives from them has no such input.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakiln.ui.sandbox import Sandbox


def bind(fn: Callable[..., Any], box: Sandbox) -> Callable[..., Any]:
    """`fn` with its first argument fixed to `box`, keeping its name (gradio's api_name) and the
    rest of its signature (gradio counts inputs and finds `gr.Progress` defaults from it)."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(box, *args, **kwargs)

    sig = inspect.signature(fn)
    call.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    return call


def build_app(box: Sandbox | str | Path) -> Any:
    """A `gradio.Blocks` for the sandbox `box` (or a bare project folder: no extra roots, as in tests
    and scripts); `server.serve` launches it."""
    import gradio as gr

    from lorakiln.ui import caption_tab, dataset_tab, generate_tab, tools_tab, train_layout

    if not isinstance(box, Sandbox):
        box = Sandbox.for_project(box)
    with gr.Blocks(title="lorakiln") as app:
        with gr.Row(equal_height=True):
            gr.Markdown("# lorakiln", elem_id="app-title")
            gr.Textbox(label="project folder", value=str(box.project), interactive=False, scale=4,
                       info="fixed when the UI was started: dataset in train/, run TOML run.toml, runs in "
                       ".lorakiln-runs/", elem_classes=["lk-help"])
            with gr.Accordion("folders this UI may use", open=False):
                gr.Markdown(box.describe())
        with gr.Tab("Dataset"):
            show_gallery, gallery_out = dataset_tab.build(box)
        with gr.Tab("Caption"):
            caption_tab.build(box, show_gallery, gallery_out)
        with gr.Tab("Train"):
            train_load = train_layout.build(box)
        with gr.Tab("Test"):
            defaults, defaults_out = generate_tab.build(box)
        with gr.Tab("Tools"):
            tools_tab.build(box)
        app.load(show_gallery, None, gallery_out)
        # one truth: every page load shows the run TOML as it is on disk now, then its step count
        (fill, fill_in, fill_out), (count, count_in, count_out), (lists, lists_in, lists_out) = train_load
        app.load(fill, fill_in, fill_out).then(count, count_in, count_out).then(lists, lists_in, lists_out)
        app.load(defaults, None, defaults_out)
    return app
