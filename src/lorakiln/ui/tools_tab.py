"""The Tools tab: `lorakiln lora info / convert / resize / merge` in forms.

Each handler is a thin call of the `lorakiln.lora_tools` function the CLI verb calls, returning
the same report text the CLI prints (or ``error: …`` with the library's message, which names the
file or option). Paths come from the browser, so each goes through the server's `Sandbox` first:
inputs are resolved (relative to the project, symlinks included) and must lie in the project or
a `--lora-dir` (a merge's base model: a `--models-dir`), outputs must lie inside the project,
and an output that is one of the inputs (another spelling, a symlink, a hard link) is refused
whatever *overwrite* says (`lorakiln.io_guard`). The library then applies its own rules too:
atomic outputs, and an existing output replaced only when *overwrite* is ticked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.io_guard import refuse_overwriting_inputs
from lorakiln.ui.sandbox import Sandbox


def _int(value: Any) -> int | None:
    return None if value in (None, "") or float(value) <= 0 else int(value)


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _opt(value: str | None) -> str | None:
    return value or None


def _lora_in(box: Sandbox, value: str, what: str = "input") -> Path:
    if not (value or "").strip():
        raise LorakilnError(f"name the {what} LoRA file")
    return box.resolve_read(value, "lora", what=what)


def _output(box: Sandbox, value: str, inputs: list[Path | str | None], verb: str, *, folder: bool = False) -> Path:
    if not (value or "").strip():
        raise LorakilnError("name the output file (a path inside the project)")
    out = box.resolve_write(value, what="output")
    refuse_overwriting_inputs(out, [i for i in inputs if i and Path(str(i)).is_absolute()], verb=verb,
                              folder_output=folder)
    return out


def info(box: Sandbox, file: str, modules: bool = False) -> str:
    """`lorakiln lora info FILE [--modules]`: kind, family, ranks, metadata, which clients load it."""
    from lorakiln.lora_tools.files.info import format_info, inspect_lora

    if not (file or "").strip():
        return "error: name a LoRA file"
    try:
        return format_info(inspect_lora(_lora_in(box, file, "LoRA file")), with_modules=modules)
    except LorakilnError as err:
        return f"error: {err}"


def convert(box: Sandbox, source: str, output: str, to: str, family: str = "", force: bool = False) -> str:
    """`lorakiln lora convert IN OUT --to kohya|diffusers`."""
    from lorakiln.lora_tools.files.convert import convert_lora, describe_result

    try:
        src = _lora_in(box, source)
        out = _output(box, output, [src], "lora convert")
        result = convert_lora(src, out, to, family=_opt(family), force=force)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_result(result)


def resize(box: Sandbox, source: str, output: str, rank: Any, conv_rank: Any, dynamic: str, dynamic_param: Any,
           save_precision: str = "", force: bool = False) -> str:
    """`lorakiln lora resize IN OUT --rank R [--conv-rank C] [--dynamic M --dynamic-param X]`."""
    from lorakiln.lora_tools.resize.resize import describe_resize, resize_lora

    param = _float(dynamic_param)
    if not _opt(dynamic):  # the form's number box sends 0 when untouched: no method, no param
        if param:
            return ("error: the dynamic param only applies with a dynamic method; pick sv_ratio, sv_fro or "
                    "sv_cumulative, or clear the param")
        param = None
    try:
        src = _lora_in(box, source)
        out = _output(box, output, [src], "lora resize")
        result = resize_lora(src, out, rank=_int(rank), conv_rank=_int(conv_rank), dynamic=_opt(dynamic),
                             dynamic_param=param, save_precision=_opt(save_precision), force=force)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_resize(result)


def merge(box: Sandbox, loras: str, output: str, model: str, to: str, method: str, density: Any, rank: Any,
          save_precision: str = "", force: bool = False) -> str:
    """`lorakiln lora merge OUT --lora FILE[:S] … [--model BASE] [--method …]`; `loras` has one
    ``FILE[:STRENGTH[:UNET]]`` per line, as the CLI's repeated ``--lora``."""
    from lorakiln.lora_tools.merge.inputs import LoraSpec
    from lorakiln.lora_tools.merge.merge import describe_result
    from lorakiln.lora_tools.merge.merge import merge as merge_loras
    from lorakiln.lora_tools.merge.options import MergeOptions, rank_spec

    try:
        specs = []
        for line in (loras or "").splitlines():
            if line.strip():
                spec = LoraSpec.parse(line.strip())
                specs.append(LoraSpec(_lora_in(box, str(spec.path)), spec.te, spec.unet))
        base = box.resolve_model(model, "model", what="base model") if (model or "").strip() else None
        out = _output(box, output, [*(s.path for s in specs), base], "lora merge",
                      folder=not Path(output.strip()).suffix)
        options = MergeOptions(method=method or "sum", density=_float(density), ranks=rank_spec(_int(rank), None, None,
                               None), save_precision=_opt(save_precision), force=force)
        result = merge_loras(specs, out, model=base, to=_opt(to), options=options)
    except LorakilnError as err:
        return f"error: {err}"
    return describe_result(result)


def lora_files(box: Sandbox) -> list[str]:
    """The LoRA files the inputs may name: `.safetensors` in the project's and `--lora-dir` folders."""
    return [str(p) for folder in box.listing("lora") for p in sorted(Path(folder).glob("*.safetensors"))][:300]


def build(box: Sandbox) -> None:
    """The tab's four tools inside an open `gr.Blocks`, bound to the server's sandbox."""
    import gradio as gr

    from lorakiln.lora_tools.files.convert import TARGETS
    from lorakiln.lora_tools.merge.merge import METHOD_CHOICES
    from lorakiln.ui.app import bind

    def pick(label: str, **kw: Any) -> Any:
        return gr.Dropdown(lora_files(box), value="", label=label, allow_custom_value=True, **kw)

    precisions = ["", "fp16", "bf16", "float"]
    gr.Markdown("Inputs: files in the project or a --lora-dir (" + ", ".join(map(str, box.read_roots("lora")))
                + "); outputs: paths inside the project (relative to it).")
    refresh = gr.Button("refresh file lists")
    with gr.Accordion("info", open=True), gr.Row():
        info_file = pick("LoRA file", scale=4)
        info_modules = gr.Checkbox(label="every module", scale=1)
        info_button = gr.Button("info", scale=1)
    with gr.Accordion("convert", open=False):
        with gr.Row():
            conv_in, conv_out = pick("input"), gr.Textbox(label="output")
            conv_to = gr.Dropdown(list(TARGETS), value="diffusers", label="to")
            conv_family = gr.Dropdown(["", "sd1", "sdxl"], value="", label="family", info="when the file does not say")
            conv_force = gr.Checkbox(label="overwrite")
        conv_button = gr.Button("convert")
    with gr.Accordion("resize", open=False):
        with gr.Row():
            res_in, res_out = pick("input"), gr.Textbox(label="output")
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
            merge_model = gr.Dropdown(["", *box.listing("model")], value="", label="base model", allow_custom_value=True,
                                      info="to merge into a checkpoint; empty: one LoRA")
            merge_to = gr.Dropdown(["", "checkpoint", "lora"], value="", label="to")
        with gr.Row():
            merge_method = gr.Dropdown(list(METHOD_CHOICES), value="sum", label="method")
            merge_density = gr.Number(label="density", info="TIES/DARE")
            merge_rank = gr.Number(label="rank", precision=0, info="LoRA output by SVD; empty: exact")
            merge_prec = gr.Dropdown(precisions, value="", label="save precision")
            merge_force = gr.Checkbox(label="overwrite")
        merge_button = gr.Button("merge")
    report = gr.Textbox(label="report", lines=16, interactive=False)

    pickers = [info_file, conv_in, res_in]
    refresh.click(lambda: [gr.Dropdown(choices=lora_files(box)) for _ in pickers], None, pickers)
    info_button.click(bind(info, box), [info_file, info_modules], report)
    conv_button.click(bind(convert, box), [conv_in, conv_out, conv_to, conv_family, conv_force], report)
    res_button.click(bind(resize, box), [res_in, res_out, res_rank, res_conv, res_dynamic, res_param, res_prec,
                                         res_force], report)
    merge_button.click(bind(merge, box), [merge_inputs, merge_out, merge_model, merge_to, merge_method,
                                          merge_density, merge_rank, merge_prec, merge_force], report)
