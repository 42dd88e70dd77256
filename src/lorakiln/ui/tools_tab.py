"""The Tools tab: `lorakiln lora info / convert / resize / merge` in forms.

Each handler is a thin call of the `lorakiln.lora_tools` function the CLI verb calls, returning
the same report text the CLI prints (or ``error: …`` with the library's message, which names the
file or option). Relative paths are taken from the project folder, as a user browsing the
project expects. Writes go through the library, so its rules hold here too: outputs are atomic,
an existing output is refused unless *overwrite* is ticked, and no input is ever written over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError


def _path(project: str, value: str) -> str:
    value = (value or "").strip()
    if not value:
        return ""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(project).expanduser() / path)


def _int(value: Any) -> int | None:
    return None if value in (None, "") or float(value) <= 0 else int(value)


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _opt(value: str | None) -> str | None:
    return value or None


def info(project: str, file: str, modules: bool = False) -> str:
    """`lorakiln lora info FILE [--modules]`: kind, family, ranks, metadata, which clients load it."""
    from lorakiln.lora_tools.inspect import format_info, inspect_lora

    if not (file or "").strip():
        return "error: name a LoRA file"
    try:
        return format_info(inspect_lora(_path(project, file)), with_modules=modules)
    except LorakilnError as err:
        return f"error: {err}"


def convert(project: str, source: str, output: str, to: str, family: str = "", force: bool = False) -> str:
    """`lorakiln lora convert IN OUT --to kohya|diffusers`."""
    from lorakiln.lora_tools.convert import convert_lora, describe_result

    try:
        result = convert_lora(_path(project, source), _path(project, output), to, family=_opt(family), force=force)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_result(result)


def resize(project: str, source: str, output: str, rank: Any, conv_rank: Any, dynamic: str, dynamic_param: Any,
           save_precision: str = "", force: bool = False) -> str:
    """`lorakiln lora resize IN OUT --rank R [--conv-rank C] [--dynamic M --dynamic-param X]`."""
    from lorakiln.lora_tools.resize import describe_resize, resize_lora

    try:
        result = resize_lora(_path(project, source), _path(project, output), rank=_int(rank),
                             conv_rank=_int(conv_rank), dynamic=_opt(dynamic), dynamic_param=_float(dynamic_param),
                             save_precision=_opt(save_precision), force=force)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_resize(result)


def merge(project: str, loras: str, output: str, model: str, to: str, method: str, density: Any, rank: Any,
          save_precision: str = "", force: bool = False) -> str:
    """`lorakiln lora merge OUT --lora FILE[:S] … [--model BASE] [--method …]`; `loras` has one
    ``FILE[:STRENGTH[:UNET]]`` per line, as the CLI's repeated ``--lora``."""
    from lorakiln.lora_tools.merge import describe_result
    from lorakiln.lora_tools.merge import merge as merge_loras
    from lorakiln.lora_tools.merge_options import MergeOptions, rank_spec

    specs = [_path(project, line) for line in (loras or "").splitlines() if line.strip()]
    try:
        options = MergeOptions(method=method or "sum", density=_float(density), ranks=rank_spec(_int(rank), None, None,
                               None), save_precision=_opt(save_precision), force=force)
        result = merge_loras(specs, _path(project, output), model=_path(project, model) or None, to=_opt(to),
                             options=options)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_result(result)


def build(project: Any) -> None:
    """The tab's four tools inside an open `gr.Blocks`."""
    import gradio as gr

    from lorakiln.lora_tools.convert import TARGETS
    from lorakiln.lora_tools.merge import METHOD_CHOICES

    precisions = ["", "fp16", "bf16", "float"]
    with gr.Accordion("info", open=True), gr.Row():
        info_file = gr.Textbox(label="LoRA file", info="relative to the project folder", scale=4)
        info_modules = gr.Checkbox(label="every module", scale=1)
        info_button = gr.Button("info", scale=1)
    with gr.Accordion("convert", open=False):
        with gr.Row():
            conv_in, conv_out = gr.Textbox(label="input"), gr.Textbox(label="output")
            conv_to = gr.Dropdown(list(TARGETS), value="diffusers", label="to")
            conv_family = gr.Dropdown(["", "sd1", "sdxl"], value="", label="family", info="when the file does not say")
            conv_force = gr.Checkbox(label="overwrite")
        conv_button = gr.Button("convert")
    with gr.Accordion("resize", open=False):
        with gr.Row():
            res_in, res_out = gr.Textbox(label="input"), gr.Textbox(label="output")
            res_rank = gr.Number(label="rank", precision=0)
            res_conv = gr.Number(label="conv rank", precision=0, info="empty: the rank")
        with gr.Row():
            res_dynamic = gr.Dropdown(["", "sv_ratio", "sv_fro", "sv_cumulative"], value="", label="dynamic")
            res_param = gr.Number(label="dynamic param")
            res_prec = gr.Dropdown(precisions, value="", label="save precision", info="empty: the input's")
            res_force = gr.Checkbox(label="overwrite")
        res_button = gr.Button("resize")
    with gr.Accordion("merge", open=False):
        merge_inputs = gr.Textbox(label="LoRAs", lines=3, info="one FILE[:STRENGTH[:UNET]] per line")
        with gr.Row():
            merge_out = gr.Textbox(label="output", info="a .safetensors file, or a folder for a diffusers checkpoint")
            merge_model = gr.Textbox(label="base model", info="to merge into a checkpoint; empty: one LoRA")
            merge_to = gr.Dropdown(["", "checkpoint", "lora"], value="", label="to")
        with gr.Row():
            merge_method = gr.Dropdown(list(METHOD_CHOICES), value="sum", label="method")
            merge_density = gr.Number(label="density", info="TIES/DARE")
            merge_rank = gr.Number(label="rank", precision=0, info="LoRA output by SVD; empty: exact")
            merge_prec = gr.Dropdown(precisions, value="", label="save precision")
            merge_force = gr.Checkbox(label="overwrite")
        merge_button = gr.Button("merge")
    report = gr.Textbox(label="report", lines=16, interactive=False)

    info_button.click(info, [project, info_file, info_modules], report)
    conv_button.click(convert, [project, conv_in, conv_out, conv_to, conv_family, conv_force], report)
    res_button.click(resize, [project, res_in, res_out, res_rank, res_conv, res_dynamic, res_param, res_prec,
                              res_force], report)
    merge_button.click(merge, [project, merge_inputs, merge_out, merge_model, merge_to, merge_method, merge_density,
                               merge_rank, merge_prec, merge_force], report)
