"""The Train tab's layout: essentials on the first screen with Start/Stop/Resume and a status bar
right under them, the run's loss, samples and log next, and every other key in closed groups.

The kohya_ss GUI shows 4–6 fields to a row under readable labels; the rows and groups come from
`ui/labels.py` and the fields from the config schema (`forms.field_specs`), so a key added to
the schema appears without layout code. Behaviour lives in `train_form` (the form and its
checks) and `train_tab` (the runs); this module only places components and wires events:

* Start first makes the checks of `lorakiln train --dry-run` (`train_form.start_problems`): each
  problem is shown beside its field and all of them in a toast, and nothing is saved or queued.
* The form is reloaded from the run TOML on every page load (`app.py`) and after every Start,
  and the step count follows the fields that change it.
* The 2-s timer updates the status bar, the buttons' state, the chart, samples and log.
"""

from __future__ import annotations

from typing import Any

from lorakiln.errors import LorakilnError
from lorakiln.ui.forms import GROUP_ORDER, FieldSpec, field_specs
from lorakiln.ui.labels import ESSENTIAL_ROWS
from lorakiln.ui.sandbox import Sandbox
from lorakiln.ui.style import SHOW_ERRORS
from lorakiln.ui.train_form import MAX_PROCESSES

#: Path keys offered as drop-downs of the server's folders (`Sandbox.listing`), by kind.
PICKED: dict[str, str] = {"model.pretrained_model": "model", "model.vae": "vae", "network.network_weights": "lora",
                          "data.train_data_dir": "data"}
#: Fields that change the step count: editing one recounts.
COUNTED = ("data.train_data_dir", "data.resolution", "data.repeats", "data.enable_bucket", "train.max_train_epochs",
           "train.max_train_steps", "train.train_batch_size", "train.gradient_accumulation_steps")
_WIDE = {"model.pretrained_model": 3, "data.train_data_dir": 2}
#: Fields per row inside a group.
_PER_ROW = 4


def elem_id(key: str) -> str:
    """`train.unet_lr` → `cfg-train-unet_lr` (the page script reads the key back from it)."""
    return "cfg-" + key.replace(".", "-", 1)


def _component(spec: FieldSpec, value: Any, box: Sandbox) -> Any:
    import gradio as gr

    common = {"label": spec.label, "info": spec.help, "elem_id": elem_id(spec.key), "elem_classes": ["lk-field"],
              "scale": _WIDE.get(spec.key, 1), "min_width": 150}
    if spec.key in PICKED:
        kind = PICKED[spec.key]
        choices = [*([""] if spec.optional else []), *box.listing(kind)]
        where = ", ".join(map(str, box.read_roots(kind)))
        common["info"] += f" (a file or folder in {where}; relative paths are relative to the run TOML)"
        return gr.Dropdown(choices, value=value, allow_custom_value=True, **common)
    if spec.kind == "bool" and not spec.optional:
        return gr.Checkbox(value=value, **common)
    if spec.kind == "bool":
        return gr.Dropdown(["", "true", "false"], value=value, **common | {"info": spec.help + " (empty: unset)"})
    if spec.kind == "choice":
        return gr.Dropdown(list(("", *spec.choices) if spec.optional else spec.choices), value=value,
                           allow_custom_value=True, **common)
    if spec.kind in ("int", "float") and spec.optional:
        # gr.Number cannot be empty: the browser sends 0 for a cleared box, which would set
        # e.g. max_train_steps = 0. A text box keeps "unset" distinct from 0.
        return gr.Textbox(value=value, placeholder="unset", **common)
    if spec.kind in ("int", "float"):
        # the schema's inclusive bounds: the browser marks a value outside them and gradio refuses it
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, minimum=spec.minimum,
                         maximum=spec.maximum, step=1 if spec.kind == "int" else 0.01, **common)
    if spec.kind in ("list", "pair"):
        common["info"] += " (JSON, e.g. [512, 512])" if spec.kind == "pair" else ' (JSON list, e.g. ["a", "b"])'
    return gr.Textbox(value=value, **common)


def _essentials(box: Sandbox, specs: dict[str, tuple[FieldSpec, Any]]) -> dict[str, Any]:
    """The first screen's rows (`labels.ESSENTIAL_ROWS`)."""
    import gradio as gr

    made: dict[str, Any] = {}
    for row in ESSENTIAL_ROWS:
        with gr.Row(equal_height=True):
            for key in row:
                made[key] = _component(*specs[key], box)
    return made


def _groups(box: Sandbox, specs: dict[str, tuple[FieldSpec, Any]]) -> dict[str, Any]:
    """Every other key in closed groups, two columns of them (half the height), 4 fields a row."""
    import gradio as gr

    made: dict[str, Any] = {}
    groups = [g for g in GROUP_ORDER if g != "essentials"]
    with gr.Row():
        for column in (groups[::2], groups[1::2]):
            with gr.Column():
                for group in column:
                    keys = [s.key for s in field_specs() if s.group == group]
                    with gr.Accordion(group, open=False, elem_classes=["lk-group"]):
                        for i in range(0, len(keys), _PER_ROW):
                            with gr.Row(equal_height=True):
                                for key in keys[i:i + _PER_ROW]:
                                    made[key] = _component(*specs[key], box)
    return made


def build(box: Sandbox) -> list[tuple[Any, Any, Any]]:
    """The tab inside an open `gr.Blocks`; returns the app's page-load steps, in order, as
    (function, inputs, outputs): fill the form from the run TOML, count its steps, list the
    server's folders again for the drop-downs."""
    import gradio as gr

    from lorakiln.config.presets import PRESET_DESCRIPTIONS
    from lorakiln.ui import train_form, train_tab
    from lorakiln.ui.app import bind

    extra = gr.State({})
    with gr.Row(equal_height=True):
        path = gr.Textbox(label="run TOML", value="run.toml", scale=2, min_width=150, elem_id="train-toml",
                          info="a .toml file in the project folder", elem_classes=["lk-help"])
        load = gr.Button("load", scale=0, min_width=80)
        save = gr.Button("save", scale=0, min_width=80)
        preset = gr.Dropdown(["", *PRESET_DESCRIPTIONS], value="", label="preset", scale=3, min_width=150,
                             info="\n".join(f"{k}: {v}" for k, v in PRESET_DESCRIPTIONS.items()),
                             elem_classes=["lk-help"])
        apply = gr.Button("apply preset", scale=0, min_width=110)
    message = gr.Markdown(elem_id="train-message")
    initial = list(train_form.load_form(box, "run.toml")[2:])
    specs = {s.key: (s, v) for s, v in zip(field_specs(), initial, strict=True)}
    made = _essentials(box, specs)
    with gr.Row(equal_height=True):
        steps = gr.Textbox(label="steps", lines=2, max_lines=6, interactive=False, elem_id="train-steps", scale=3)
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button("Start", variant="primary", min_width=170, elem_id="train-start")
                stop = gr.Button("Stop", min_width=90, interactive=False, elem_id="train-stop")
                resume = gr.Button("Resume", min_width=90, interactive=False, elem_id="train-resume")
            processes = gr.Number(1, label="processes", precision=0, minimum=1, maximum=MAX_PROCESSES,
                                  elem_id="train-processes", elem_classes=["lk-help"],
                                  info="one per GPU: 2 or more train one run on that many processes "
                                  "(global batch = batch size × processes)")
            status = gr.Markdown("no runs yet", elem_id="run-status")
    with gr.Row(equal_height=True):
        plot = gr.LinePlot(x="step", y="loss", title="loss", height=240, scale=1)
        samples = gr.Gallery(label="samples", columns=4, height=240, object_fit="contain", scale=1,
                             elem_id="train-samples", preview=False)
    log = gr.Textbox(label="log", lines=8, max_lines=8, interactive=False, elem_id="train-log")
    made |= _groups(box, specs)
    components = [made[s.key] for s in field_specs()]
    with gr.Accordion("runs and saved LoRAs", open=False):
        with gr.Row():
            run_id = gr.Textbox(label="run", elem_id="train-run", info="a run's id from the table to watch, stop or resume it; "
                                "empty: the live or latest run", scale=1)
            saves = gr.Textbox(label="saved LoRAs (validation loss, drift, the recommended file)", lines=3,
                               interactive=False, scale=3, elem_id="train-saves")
        queue = gr.Dataframe(headers=train_tab.QUEUE_COLUMNS, label="runs (newest first)", interactive=False,
                             wrap=True)
    timer = gr.Timer(2.0)
    seen = gr.State("")

    form = [processes, path, extra, *components]
    count_steps = bind(total_steps, box)
    reload = bind(train_form.load_form, box)
    toast = _toasting

    processes.input(count_steps, form, steps, trigger_mode="always_last")
    load.click(toast(reload, 1), [path], [extra, message, *components]).then(count_steps, form, steps)
    apply.click(toast(train_form.apply_preset, 1), [preset, extra, *components],
                [extra, message, *components]).then(count_steps, form, steps)
    save.click(toast(bind(train_form.save_form, box), 0), form[1:], message).then(count_steps, form, steps)
    gr.on([made[k].input for k in COUNTED], count_steps, form, steps, trigger_mode="always_last")
    # gradio's own `validator` marks would be reset by the next event's status update: the
    # page script (style.SHOW_ERRORS) keeps each message beside its field until it is edited
    errors = gr.JSON(visible=False)
    start.click(toast(bind(start_checked, box), 1), form, [gr.State(), message, errors],
                api_name="start_run").then(
        None, [errors], None, js=SHOW_ERRORS).then(bind(reload_unless_refused, box), [path, errors],
                                                   [extra, *components]).then(count_steps, form, steps)
    stop.click(toast(bind(train_tab.stop_run, box), 0), [run_id], message)
    resume.click(toast(bind(train_tab.resume_run, box), 1), [run_id], [gr.State(), message])
    buttons = [start, stop, resume]
    # no progress overlay on a 2-s poll (it would flash, and it resets the fields' validation errors)
    timer.tick(bind(train_tab.poll_view, box), [run_id, seen], [status, plot, samples, saves, log, *buttons, seen],
               show_progress="hidden").then(bind(train_tab.queue_table, box), None, queue, show_progress="hidden")
    picked = [made[key] for key in PICKED]
    return [(reload, [path], [extra, message, *components]), (count_steps, form, steps),
            (bind(picker_choices, box), None, picked)]


def picker_choices(box: Sandbox) -> list[Any]:
    """The drop-downs of the server's folders listed again (on each page load: a model copied
    into a models folder after the UI started appears without a restart)."""
    import gradio as gr

    specs = {s.key: s for s in field_specs()}
    return [gr.update(choices=[*([""] if specs[key].optional else []), *box.listing(kind)])
            for key, kind in PICKED.items()]


def total_steps(box: Sandbox, processes: Any, path: str, extra: dict[str, Any], *components: Any) -> str:
    """The live step line for the form on `processes` processes (`train_form.total_steps`)."""
    from lorakiln.ui.train_form import total_steps

    return total_steps(box, path, extra, *components, processes=processes)


def start_checked(box: Sandbox, processes: Any, path: str, extra: dict[str, Any],
                  *components: Any) -> tuple[str, str, dict]:
    """Start as the button runs it: what `lorakiln train --dry-run` would refuse comes back as
    {element id: message} for the page script to show beside each field (the message, with all
    of them, is also a toast: `_toasting`); nothing is saved or queued then. Otherwise
    `train_tab.queue_form` on `processes` processes (the checks are not made twice)."""
    from lorakiln.ui.train_form import process_count, start_problems
    from lorakiln.ui.train_tab import queue_form
    from lorakiln.ui.wording import ui_words

    problems = {k: ui_words(v) for k, v in start_problems(box, path, extra, *components).items()}
    try:
        count = process_count(processes)
    except LorakilnError as err:
        problems["processes"] = str(err)
    if problems:
        keys = {s.key for s in field_specs()}
        where = {"processes": "train-processes"}
        return "", "error: Start refused (the fields are marked): " + "; ".join(problems.values()), {
            (elem_id(k) if k in keys else where.get(k, "train-toml")): v for k, v in problems.items()}
    run_id, message = queue_form(box, path, extra, *components, processes=count)
    return run_id, message, {}


def reload_unless_refused(box: Sandbox, path: str, errors: dict | None) -> tuple[Any, ...]:
    """After Start: the form as saved (one truth), unless Start was refused — then the user's
    edits stay in the form, marked, for them to fix."""
    import gradio as gr

    from lorakiln.ui.train_form import load_form

    if errors:
        return tuple(gr.skip() for _ in range(1 + len(field_specs())))
    extra, _message, *values = load_form(box, path)
    return (extra, *values)


def _toasting(fn: Any, at: int) -> Any:
    """`fn` whose message output (position `at`) is put in the UI's words (`wording.ui_words`)
    and also shown as a toast: an error as a warning toast for 30 s, anything else as a short
    note — where the user looks, whatever part of the page is in view."""
    import functools
    import inspect

    import gradio as gr

    from lorakiln.ui.wording import ui_words

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        out = fn(*args)
        text = out if isinstance(out, str) else out[at]
        if isinstance(text, str):  # the library's messages name CLI flags; the page names its fields
            text = ui_words(text)
            out = text if isinstance(out, str) else (*out[:at], text, *out[at + 1:])
        if isinstance(text, str) and text.startswith("error"):
            gr.Warning(text.removeprefix("error: "), duration=30)
        elif isinstance(text, str) and text:
            gr.Info(text, duration=5)
        return out

    call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return call
