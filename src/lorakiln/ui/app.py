"""The web UI's layout: a project folder on top, then the Dataset, Caption, Train, Test and Tools tabs
(the order of the seed-000 workflow: gather images, caption, train, try the LoRA in A1111, fix it up).

Only layout lives here; each tab's behaviour is in plain handler functions (`dataset_tab`,
`caption_tab`, `train_tab`, `generate_tab`, `tools_tab`) that tests call directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_app(project: str | Path) -> Any:
    """A `gradio.Blocks` for `project` (created if missing); `server.run` launches it."""
    import gradio as gr

    from lorakiln.ui import caption_tab, dataset_tab, generate_tab, tools_tab, train_tab

    root = Path(project).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="lorakiln") as app:
        gr.Markdown("# lorakiln")
        folder = gr.Textbox(label="project folder", value=str(root), info="dataset in <project>/train, "
                            "run TOML <project>/run.toml, runs in <project>/.lorakiln-runs (created if missing)")
        with gr.Tab("Dataset"):
            show_gallery, gallery_in, gallery_out = dataset_tab.build(folder)
        with gr.Tab("Caption"):
            caption_tab.build(folder, show_gallery, gallery_in, gallery_out)
        with gr.Tab("Train"):
            count, count_in, count_out = train_tab.build(folder, str(root))
        with gr.Tab("Test"):
            defaults, defaults_in, defaults_out = generate_tab.build(folder)
        with gr.Tab("Tools"):
            tools_tab.build(folder)
        app.load(show_gallery, gallery_in, gallery_out)
        app.load(count, count_in, count_out)
        app.load(defaults, defaults_in, defaults_out)
    return app
