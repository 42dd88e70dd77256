"""The Tools tab: `lorakiln lora info / convert / resize / merge` in forms.

Each handler is a thin call of the `lorakiln.lora_tools` function the CLI verb calls, returning
the same report text the CLI prints (or ``error: …`` with the library's message, which names the
file or option), in the UI's words (`wording.ui_words`: field names, not CLI flags).

Inputs are picked, not typed: drop-downs of the `.safetensors` files in the project and the
server's LoRA folders (a merge's base model: its models folders), and gradio refuses a value
that is not one of the choices. The handlers still treat every value as untrusted (the HTTP
API can send anything): inputs are resolved (relative to the project, symlinks included) and
must lie in those folders (`Sandbox`), outputs — typed, a path inside the project — too, and an
output that is one of the inputs (another spelling, a symlink, a hard link) is refused whatever
*overwrite* says (`lorakiln.io_guard`). The library then applies its own rules: atomic outputs,
and an existing output replaced only when *overwrite* is ticked.

Every tool runs with only its input and output chosen: convert converts to the other format,
resize to rank 4 (kohya's `resize_lora.py` default ``--new_rank 4``), merge sums the picked LoRAs
at strength 1 (exact concatenation), and a number box the browser sends as 0 counts as empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.io_guard import refuse_overwriting_inputs
from lorakiln.ui.sandbox import Sandbox, SandboxError
from lorakiln.ui.wording import ui_words

#: kohya's `networks/resize_lora.py` `--new_rank` default, the resize form's starting rank.
DEFAULT_RESIZE_RANK = 4
_LISTED = 300


def _int(value: Any) -> int | None:
    return None if value in (None, "") or float(value) <= 0 else int(value)


def _float(value: Any) -> float | None:
    """An optional number: empty, or 0 (what an untouched number box sends), is unset."""
    return None if value in (None, "") or float(value) == 0 else float(value)


def _opt(value: str | None) -> str | None:
    return value or None


def _error(err: Exception) -> str:
    return "error: " + ui_words(str(err), model_field="base model")


def _lora_in(box: Sandbox, value: str | None, what: str = "input") -> Path:
    if not (value or "").strip():
        raise LorakilnError(f"pick the {what} LoRA file")
    return box.resolve_read(str(value), "lora", what=what)


def _output(box: Sandbox, value: str | None, inputs: list[Path | str | None], verb: str, *,
            folder: bool = False) -> Path:
    if not (value or "").strip():
        raise LorakilnError("name the output file (a path inside the project, e.g. output/new.safetensors)")
    out = box.resolve_write(str(value), what="output")
    refuse_overwriting_inputs(out, [i for i in inputs if i and Path(str(i)).is_absolute()], verb=verb,
                              folder_output=folder)
    return out


def shown(box: Sandbox, path: Path) -> str:
    """How a picker shows (and sends back) a file: relative to the project when inside it, which
    is how the handlers resolve it; absolute for the server's other folders."""
    try:
        return path.relative_to(box.project).as_posix()
    except ValueError:
        return str(path)


def lora_files(box: Sandbox) -> list[str]:
    """The LoRA files an input may be: `.safetensors` files in the project's and the server's LoRA
    folders, each one the sandbox accepts (a file reached through a symlink that leads out of
    those folders is not offered)."""
    found: list[str] = []
    for folder in box.listing("lora"):
        for path in sorted(Path(folder).glob("*.safetensors")):
            try:
                box.resolve_read(path, "lora")
            except SandboxError:
                continue
            found.append(shown(box, path))
            if len(found) >= _LISTED:
                return found
    return found


def _is_lora(path: Path) -> bool:
    """A `.safetensors` file whose keys are LoRA modules (read from its header only): the
    project's LoRAs lie beside its models, and a LoRA is no base model."""
    from lorakiln.lora_tools.files.header import read_header
    from lorakiln.lora_tools.files.modules import group_modules

    if not path.is_file():
        return False
    try:
        return bool(group_modules(list(read_header(path).tensors))[0])
    except (OSError, LorakilnError):
        return False  # a damaged file stays listed: the merge then says what is wrong with it


def base_models(box: Sandbox) -> list[tuple[str, str]]:
    """A merge's base-model choices: none (merge into one LoRA), then the model files and
    diffusers folders of the project and the server's models folders (LoRA files left out)."""
    models = []
    for item in box.listing("model"):
        try:
            path = box.resolve_read(item, "model")
        except SandboxError:
            continue
        if not _is_lora(path):
            models.append(shown(box, Path(item)))
    return [("none: merge into one LoRA", ""), *((m, m) for m in models)]


def _other_format(source: Path) -> str:
    """The format a convert makes when "to" is left on auto: kohya for a diffusers/PEFT file,
    diffusers for a kohya one."""
    from lorakiln.lora_tools.files.header import read_header
    from lorakiln.lora_tools.files.modules import detect_format, group_modules

    modules = group_modules(list(read_header(source).tensors))[0]
    return "kohya" if detect_format(modules).startswith("diffusers") else "diffusers"


def info(box: Sandbox, file: str | None, modules: bool = False) -> str:
    """`lorakiln lora info FILE`: kind, family, ranks, metadata, which clients load it."""
    from lorakiln.lora_tools.files.info import format_info, inspect_lora

    if not (file or "").strip():
        return "error: pick a LoRA file"
    try:
        return ui_words(format_info(inspect_lora(_lora_in(box, file, "LoRA file")), with_modules=bool(modules)),
                        model_field="base model")
    except LorakilnError as err:
        return _error(err)


def convert(box: Sandbox, source: str | None, output: str | None, to: str | None = "", family: str | None = "",
            force: bool = False) -> str:
    """`lorakiln lora convert IN OUT`; "to" empty: the other format than the input's."""
    from lorakiln.lora_tools.files.convert import convert_lora, describe_result

    try:
        src = _lora_in(box, source)
        out = _output(box, output, [src], "lora convert")
        result = convert_lora(src, out, to or _other_format(src), family=_opt(family), force=bool(force))
    except LorakilnError as err:
        return _error(err)
    return ui_words(describe_result(result), model_field="base model")


def resize(box: Sandbox, source: str | None, output: str | None, rank: Any = DEFAULT_RESIZE_RANK,
           conv_rank: Any = None, dynamic: str | None = "", dynamic_param: Any = None, save_precision: str | None = "",
           force: bool = False) -> str:
    """`lorakiln lora resize IN OUT` to `rank` (or a dynamic rule capped by it)."""
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
                             dynamic_param=param, save_precision=_opt(save_precision), force=bool(force))
    except LorakilnError as err:
        return _error(err)
    return ui_words(describe_resize(result), model_field="base model")


_STRENGTH = re.compile(r"^\s*(-?\d+(?:\.\d*)?|-?\.\d+)(?::(-?\d+(?:\.\d*)?|-?\.\d+))?\s*$")


def parse_strengths(text: str | None, count: int) -> list[tuple[float, float]]:
    """The strengths box → one (text encoder, U-Net) pair per picked LoRA, A1111's
    ``<lora:name:te:unet>`` order: empty → 1 each; one value → that for all; else one per LoRA,
    separated by commas or spaces, each ``TE`` or ``TE:UNET`` (U-Net defaults to TE, as A1111)."""
    items = [t for t in re.split(r"[,\s]+", (text or "").strip()) if t]
    if not items:
        return [(1.0, 1.0)] * count
    pairs = []
    for item in items:
        m = _STRENGTH.match(item)
        if m is None:
            raise LorakilnError(f"strength {item!r} is not a number (or TE:UNET, e.g. 1:0.5)")
        te = float(m[1])
        pairs.append((te, float(m[2]) if m[2] is not None else te))
    if len(pairs) == 1:
        return pairs * count
    if len(pairs) != count:
        raise LorakilnError(f"{len(pairs)} strengths for {count} LoRA(s): give one per picked LoRA, in order, "
                            "or one for all")
    return pairs


def merge(box: Sandbox, loras: list[str] | str | None, strengths: str | None, output: str | None,
          model: str | None = "", to: str | None = "", method: str | None = "sum", density: Any = None,
          rank: Any = None, save_precision: str | None = "", force: bool = False) -> str:
    """`lorakiln lora merge OUT --lora FILE:S … [--model BASE]`: the picked `loras` (a list; a text
    gives one file per line) at `strengths`, into one LoRA, or into the base `model`."""
    from lorakiln.lora_tools.merge.inputs import LoraSpec
    from lorakiln.lora_tools.merge.merge import describe_result
    from lorakiln.lora_tools.merge.merge import merge as merge_loras
    from lorakiln.lora_tools.merge.options import MergeOptions, rank_spec

    picked = [p for p in ((loras or "").splitlines() if isinstance(loras, str) else (loras or [])) if p.strip()]
    try:
        if not picked:
            raise LorakilnError("pick at least one LoRA to merge")
        files = [_lora_in(box, p.strip()) for p in picked]
        specs = [LoraSpec(f, te, unet) for f, (te, unet) in zip(files, parse_strengths(strengths, len(files)),
                                                               strict=True)]
        base = box.resolve_model(model, "model", what="base model") if (model or "").strip() else None
        text = (output or "").strip()
        out = _output(box, text, [*files, base], "lora merge", folder=bool(text) and not Path(text).suffix)
        options = MergeOptions(method=method or "sum", density=_float(density), ranks=rank_spec(_int(rank), None, None,
                               None), save_precision=_opt(save_precision), force=bool(force))
        result = merge_loras(specs, out, model=base, to=_opt(to), options=options)
    except LorakilnError as err:
        return _error(err)
    return ui_words(describe_result(result), model_field="base model")


def build(box: Sandbox) -> None:
    """The tab's four tools inside an open `gr.Blocks`, bound to the server's sandbox."""
    import gradio as gr

    from lorakiln.lora_tools.files.convert import TARGETS
    from lorakiln.lora_tools.merge.merge import METHOD_CHOICES
    from lorakiln.ui.app import bind

    def pick(label: str, **kw: Any) -> Any:  # only listed files: gradio refuses any other value
        return gr.Dropdown(lora_files(box), value=None, label=label, allow_custom_value=False, **kw)

    precisions = ["", "fp16", "bf16", "float"]
    gr.Markdown("Inputs: the LoRA files of the project and the server's LoRA folders ("
                + ", ".join(map(str, box.read_roots("lora"))) + "); outputs: paths inside the project "
                "(relative to it).")
    refresh = gr.Button("refresh file lists")
    with gr.Accordion("info", open=True) as info_box, gr.Row():
        info_file = pick("LoRA file", scale=4)
        info_modules = gr.Checkbox(label="every module", scale=1)
        info_button = gr.Button("info", scale=1)
    with gr.Accordion("convert", open=False) as conv_box:
        with gr.Row():
            conv_in, conv_out = pick("input"), gr.Textbox(label="output", placeholder="output/name-diffusers.safetensors")
            conv_to = gr.Dropdown([("the other format", ""), *((t, t) for t in TARGETS)], value="", label="to")
            conv_family = gr.Dropdown(["", "sd1", "sdxl"], value="", label="family", info="when the file does not say")
            conv_force = gr.Checkbox(label="overwrite")
        conv_button = gr.Button("convert")
    with gr.Accordion("resize", open=False) as res_box:
        with gr.Row():
            res_in, res_out = pick("input"), gr.Textbox(label="output", placeholder="output/name-r4.safetensors")
            res_rank = gr.Number(label="rank", value=DEFAULT_RESIZE_RANK, precision=0,
                                 info="with a dynamic method: the most a module keeps")
            res_conv = gr.Number(label="conv rank", precision=0, info="empty: the rank")
        with gr.Row():
            res_dynamic = gr.Dropdown(["", "sv_ratio", "sv_fro", "sv_cumulative"], value="", label="dynamic")
            res_param = gr.Number(label="dynamic param")
            res_prec = gr.Dropdown(precisions, value="", label="save precision", info="empty: the input's")
            res_force = gr.Checkbox(label="overwrite")
        res_button = gr.Button("resize")
    with gr.Accordion("merge", open=False) as merge_box:
        with gr.Row():
            merge_inputs = gr.Dropdown(lora_files(box), value=[], multiselect=True, label="LoRAs", scale=3,
                                       allow_custom_value=False)
            merge_strengths = gr.Textbox(label="strengths", placeholder="0.7, 0.3", scale=2,
                                         info="one per LoRA in order, or one for all (TE:UNET as 1:0.5); empty: 1")
        with gr.Row():
            merge_out = gr.Textbox(label="output", info="a .safetensors file, or a folder for a diffusers checkpoint")
            merge_model = gr.Dropdown(base_models(box), value="", label="base model", allow_custom_value=False,
                                      info="to merge into a checkpoint")
            merge_to = gr.Dropdown(["", "checkpoint", "lora"], value="", label="to")
        with gr.Row():
            merge_method = gr.Dropdown(list(METHOD_CHOICES), value="sum", label="method")
            merge_density = gr.Number(label="density", info="TIES/DARE")
            merge_rank = gr.Number(label="rank", precision=0, info="LoRA output by SVD; empty: exact")
            merge_prec = gr.Dropdown(precisions, value="", label="save precision")
            merge_force = gr.Checkbox(label="overwrite")
        merge_button = gr.Button("merge")
    report = gr.Textbox(label="report", lines=16, interactive=False, elem_id="tools-report")

    pickers = [info_file, conv_in, res_in, merge_inputs]

    def rescan() -> list[Any]:
        files = lora_files(box)
        return [*(gr.Dropdown(choices=files) for _ in pickers), gr.Dropdown(choices=base_models(box))]

    refresh.click(rescan, None, [*pickers, merge_model])
    for box_ in (info_box, conv_box, res_box, merge_box):  # a LoRA trained meanwhile shows up on opening
        box_.expand(rescan, None, [*pickers, merge_model])
    info_button.click(bind(info, box), [info_file, info_modules], report)
    conv_button.click(bind(convert, box), [conv_in, conv_out, conv_to, conv_family, conv_force], report)
    res_button.click(bind(resize, box), [res_in, res_out, res_rank, res_conv, res_dynamic, res_param, res_prec,
                                         res_force], report)
    merge_button.click(bind(merge, box), [merge_inputs, merge_strengths, merge_out, merge_model, merge_to,
                                          merge_method, merge_density, merge_rank, merge_prec, merge_force], report)
