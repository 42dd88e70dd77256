"""The Train tab: the run-TOML form, total steps, and Start/Stop/Resume with live progress.

The form is generated from `forms.field_specs()` (so a new config key appears without UI code)
and saved through `forms.save_run_toml` (so the form cannot hold a value the CLI would refuse).
Trainings go through `runs.RunQueue` — one `lorakiln train` process at a time under
`<project>/.lorakiln-runs` — and the timer's `poll` both advances the queue and reads progress.

Handlers are plain functions; the form's values travel as one positional value per field in
`field_specs()` order (`*values`), which is what gradio passes for a list of inputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lorakiln.errors import ConfigError, LorakilnError
from lorakiln.ui.forms import GROUP_ORDER, FieldSpec, field_specs, load_run_toml, save_run_toml, step_summary
from lorakiln.ui.runs import RunQueue

RUNS_FOLDER = ".lorakiln-runs"
#: A new project's form: the Dataset tab's folder and an output folder inside the project.
NEW_PROJECT = {"data.train_data_dir": "train", "output.output_dir": "output"}
_BOOL3 = {"": None, "true": True, "false": False}
_QUEUES: dict[Path, RunQueue] = {}


def queue_for(project: str | Path) -> RunQueue:
    """One queue object per project for the life of the UI: it holds the child process handles."""
    folder = (Path(project).expanduser() / RUNS_FOLDER).resolve()
    if folder not in _QUEUES:
        _QUEUES[folder] = RunQueue(folder)
    return _QUEUES[folder]


def existing_queue(project: str | Path) -> RunQueue | None:
    """The project's queue if it has one: the timer polls whatever the project box holds, even
    mid-typing, and must not create run folders in half-typed paths."""
    folder = (Path(project).expanduser() / RUNS_FOLDER).resolve()
    return queue_for(project) if folder in _QUEUES or (folder / "queue.json").is_file() else None


def toml_path(project: str | Path, path: str | None) -> Path:
    """The run TOML: `path` (relative to the project) or `<project>/run.toml`."""
    root = Path(project).expanduser()
    given = Path((path or "").strip() or "run.toml").expanduser()
    return given if given.is_absolute() else root / given


# -- form values <-> component values --------------------------------------------------------

def to_component(spec: FieldSpec, value: Any) -> Any:
    """A config value as its component shows it (lists and pairs as JSON text)."""
    if spec.kind == "bool":
        return {None: "", True: "true", False: "false"}[value] if spec.optional else bool(value)
    if spec.kind in ("list", "pair"):
        if value is None:
            return ""
        # a TOML may hold the short forms the config accepts (`resolution = 64`, `"64,64"`): shown as written
        return json.dumps(list(value) if isinstance(value, (list, tuple)) else value)
    if spec.kind in ("str", "choice") or (spec.optional and spec.kind in ("int", "float")):
        return "" if value is None else str(value)  # optional numbers are text boxes: empty = unset
    return value


def from_component(spec: FieldSpec, value: Any) -> Any:
    """A component's value as the config value (empty means unset for optional fields)."""
    if isinstance(value, str):
        value = value.strip()
    if spec.kind == "bool":
        return _BOOL3.get(str(value)) if spec.optional else bool(value)
    if value is None or value == "":
        if spec.kind == "list" and not spec.optional:
            return []
        return None if spec.optional or spec.kind in ("int", "float", "choice") else ""
    if spec.kind in ("list", "pair"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{spec.key}: {value!r} is not a JSON list, e.g. [512, 512]") from None
    if spec.kind in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{spec.key}: {value!r} is not a number") from None
        if spec.kind == "int":
            return int(number) if number.is_integer() else number  # a fraction: the config names the key
        return number
    return value


def form_values(extra: dict[str, Any] | None, components: tuple[Any, ...]) -> dict[str, Any]:
    """Config values from the components, plus keys the form has no field for (e.g. `preset`)."""
    specs = field_specs()
    return dict(extra or {}) | {spec.key: from_component(spec, v) for spec, v in zip(specs, components, strict=True)}


def component_values(values: dict[str, Any]) -> list[Any]:
    return [to_component(spec, values.get(spec.key, spec.default)) for spec in field_specs()]


# -- handlers -----------------------------------------------------------------------------------

def load_form(project: str, path: str) -> tuple[Any, ...]:
    """(extra keys, message, *component values) of the run TOML, or a new project's form."""
    file = toml_path(project, path)
    if file.is_file():
        try:
            values = load_run_toml(file)
        except (OSError, ValueError, LorakilnError) as err:  # tomllib raises ValueError subclasses
            values, msg = {s.key: s.default for s in field_specs()} | NEW_PROJECT, f"error: {file}: {err}"
        else:
            msg = f"loaded {file}"
    else:
        values, msg = {s.key: s.default for s in field_specs()} | NEW_PROJECT, f"{file} does not exist yet: new form"
    keys = {s.key for s in field_specs()}
    return ({k: v for k, v in values.items() if k not in keys}, msg, *component_values(values))


def apply_preset(name: str, extra: dict[str, Any], *components: Any) -> tuple[Any, ...]:
    """(extra, message, *components) with preset `name`'s values written into the form (seed 000's
    table, seed 003's recipe, …): shown and editable like any value, and saved explicitly."""
    from lorakiln.config.load import route_flat_keys
    from lorakiln.config.presets import PRESET_DESCRIPTIONS, get_preset

    if not name:
        return (extra, "choose a preset first", *components)
    try:
        values = form_values(extra, components)
        for section, table in route_flat_keys(get_preset(name)).items():
            values |= {f"{section}.{key}": value for key, value in table.items()}
    except LorakilnError as err:
        return (extra, f"error: {err}", *components)
    values.pop("preset", None)  # its values are now in the form itself
    keys = {s.key for s in field_specs()}
    return ({k: v for k, v in values.items() if k not in keys},
            f"applied preset {name}: {PRESET_DESCRIPTIONS.get(name, '')} (save or start to keep it)",
            *component_values(values))


def save_form(project: str, path: str, extra: dict[str, Any], *components: Any) -> str:
    """Validate and write the run TOML; a bad value is reported by its key and nothing is written."""
    file = toml_path(project, path)
    try:
        save_run_toml(file, form_values(extra, components))
    except LorakilnError as err:
        return f"error: {err}"
    return f"saved {file}"


def total_steps(project: str, path: str, extra: dict[str, Any], *components: Any) -> str:
    """The trainer's step arithmetic for the form as it is now (relative paths from the TOML's folder)."""
    try:
        values = form_values(extra, components)
    except LorakilnError as err:
        return f"error: {err}"
    return step_summary(values, toml_path(project, path).parent)


def start_run(project: str, path: str, extra: dict[str, Any], *components: Any) -> tuple[str, str]:
    """Save the form, queue a training of it and start it if nothing else runs: (run id, message)."""
    saved = save_form(project, path, extra, *components)
    if saved.startswith("error"):
        return "", saved
    queue = queue_for(project)
    try:
        run = queue.submit(toml_path(project, path))
    except LorakilnError as err:
        return "", f"error: {err}"
    queue.poll()
    return run.id, f"{saved}; run {run.id} {queue.get(run.id).status}"


def _current(queue: RunQueue, run_id: str) -> str | None:
    runs = queue.runs()
    return (run_id or "").strip() or (runs[-1].id if runs else None)


def stop_run(project: str, run_id: str) -> str:
    """Stop the run (SIGINT: the trainer saves a LoRA and a state); a queued one is cancelled."""
    queue = existing_queue(project)
    current = _current(queue, run_id) if queue else None
    if queue is None or current is None:
        return "error: no run to stop"
    try:
        run = queue.stop(current)
    except LorakilnError as err:
        return f"error: {err}"
    return f"run {run.id}: {'cancelled' if run.status == 'cancelled' else 'stopping (saving a LoRA and state)'}"


def resume_run(project: str, run_id: str) -> tuple[str, str]:
    """Queue a continuation of a stopped run from its state: (new run id, message)."""
    queue = existing_queue(project)
    current = _current(queue, run_id) if queue else None
    if queue is None or current is None:
        return "", "error: no run to resume"
    try:
        run = queue.resume(current)
    except LorakilnError as err:
        return current, f"error: {err}"
    queue.poll()
    return run.id, f"run {run.id} resumes {current}: {queue.get(run.id).status}"


def _images(paths: list[str], limit: int = 12) -> list[Any]:
    """Loaded copies of the newest images: served from memory, so output folders outside the
    project need not be opened to gradio's file server."""
    from PIL import Image

    shown = []
    for path in paths[-limit:]:
        try:
            with Image.open(path) as im:
                shown.append((im.convert("RGB"), Path(path).name))
        except OSError:
            continue
    return shown


def poll_view(project: str, run_id: str) -> tuple[str, Any, list[Any], str, str]:
    """Advance the queue, then (status, loss table, samples, saved LoRAs, log tail) of the run."""
    import pandas as pd

    empty = pd.DataFrame({"step": [], "loss": []})
    queue = existing_queue(project)
    if queue is None:
        return "no runs yet", empty, [], "", ""
    queue.poll()
    current = _current(queue, run_id)
    if current is None:
        return "no runs yet", empty, [], "", ""
    try:
        run = queue.get(current)
    except LorakilnError as err:
        return f"error: {err}", empty, [], "", ""
    progress = queue.progress(run.id)
    lines = [f"**{run.id}**: {run.status}" + (f" — {run.message}" if run.message else "")]
    last = progress["last"]
    if last:
        eta, loss = last.get("eta"), last.get("loss")
        lines.append(f"step {last['step']}/{last.get('total_steps', '?')}"
                     + (f" · loss {loss:.4f}" if loss is not None else "")
                     + f" · {last.get('steps_per_s') or 0:.2f} it/s" + (f" · ETA {eta:.0f} s" if eta is not None else ""))
    others = [f"{r.id}: {r.status}" for r in queue.runs() if r.id != run.id][-5:]
    if others:
        lines.append("other runs: " + "; ".join(others))
    saves = [*progress["saves"], *([run.lora] if run.lora and run.lora not in progress["saves"] else [])]
    table = pd.DataFrame(progress["losses"], columns=["step", "loss"]) if progress["losses"] else empty
    return "  \n".join(lines), table, _images(progress["samples"]), "\n".join(saves), queue.log_tail(run.id)


QUEUE_COLUMNS = ["run", "status", "config", "step", "started", "ended", "LoRA", "message"]


def queue_table(project: str) -> Any:
    """Every run of the project's queue, newest first: what ran, how it ended, what it wrote."""
    import pandas as pd

    queue = existing_queue(project)
    rows = []
    for run in reversed(queue.runs() if queue else []):
        # only a running run's events file is read on each 2 s tick: finished runs keep their record
        last = queue.progress(run.id)["last"] if queue and run.status == "running" else None
        step = f"{last['step']}/{last.get('total_steps', '?')}" if last else ""
        rows.append([run.id, run.status, Path(run.config).name, step, _clock(run.started), _clock(run.ended),
                     Path(run.lora).name if run.lora else "", run.message or ""])
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def _clock(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


# -- layout --------------------------------------------------------------------------------------

def _component(spec: FieldSpec, value: Any) -> Any:
    import gradio as gr

    label, info = spec.key, spec.help
    if spec.kind == "bool" and not spec.optional:
        return gr.Checkbox(label=label, info=info, value=value)
    if spec.kind == "bool":
        return gr.Dropdown(["", "true", "false"], label=label, info=info + " (empty: unset)", value=value)
    if spec.kind == "choice":
        return gr.Dropdown(list(("", *spec.choices) if spec.optional else spec.choices), label=label, info=info,
                           value=value, allow_custom_value=True)
    if spec.kind in ("int", "float") and spec.optional:
        # gr.Number cannot be empty: the browser sends 0 for a cleared box, which would set
        # e.g. max_train_steps = 0. A text box keeps "unset" distinct from 0.
        return gr.Textbox(label=label, info=info + " (empty: unset)", value=value)
    if spec.kind in ("int", "float"):
        return gr.Number(label=label, info=info, value=value, precision=0 if spec.kind == "int" else None)
    if spec.kind in ("list", "pair"):
        info += " (JSON, e.g. [512, 512])" if spec.kind == "pair" else ' (JSON list, e.g. ["a", "b"])'
    return gr.Textbox(label=label, info=info, value=value)


def build(project: Any, initial_project: str) -> tuple[Any, Any, Any]:
    """The tab inside an open `gr.Blocks`; returns (load function, inputs, outputs) for the app's load."""
    import gradio as gr

    extra = gr.State({})
    with gr.Row():
        path = gr.Textbox(label="run TOML", value="run.toml", info="relative to the project folder", scale=4)
        load = gr.Button("load", scale=1)
        save = gr.Button("save", scale=1)
    from lorakiln.config.presets import PRESET_DESCRIPTIONS

    with gr.Row():
        preset = gr.Dropdown(["", *PRESET_DESCRIPTIONS], value="", label="preset", scale=4,
                             info="; ".join(f"{k}: {v}" for k, v in PRESET_DESCRIPTIONS.items())[:400])
        apply = gr.Button("apply preset", scale=1)
    message = gr.Markdown()
    initial = load_form(initial_project, "run.toml")
    fields = []
    specs = field_specs()
    for group in GROUP_ORDER:
        with gr.Accordion(group, open=group != "advanced"):
            for spec, value in zip(specs, initial[2:], strict=True):
                if spec.group == group:
                    fields.append((specs.index(spec), _component(spec, value)))
    components = [c for _, c in sorted(fields, key=lambda item: item[0])]
    with gr.Row():
        steps = gr.Textbox(label="total steps", lines=4, interactive=False, scale=4)
        count = gr.Button("count steps", scale=1)
    with gr.Row():
        start, stop, resume = gr.Button("start", variant="primary"), gr.Button("stop"), gr.Button("resume")
        run_id = gr.Textbox(label="run", info="empty: the latest run", scale=2)
    status = gr.Markdown(elem_id="run-status")
    plot = gr.LinePlot(x="step", y="loss", title="loss", height=260)
    samples = gr.Gallery(label="samples", columns=4, height=260)
    saves = gr.Textbox(label="saved LoRAs", lines=3, interactive=False)
    log = gr.Textbox(label="log", lines=12, max_lines=12, interactive=False, autoscroll=True)
    queue = gr.Dataframe(headers=QUEUE_COLUMNS, label="queue (newest first; type a run's id in 'run' to act on it)",
                         interactive=False, wrap=True)
    timer = gr.Timer(2.0)

    form = [project, path, extra, *components]
    load.click(load_form, [project, path], [extra, message, *components]).then(total_steps, form, steps)
    apply.click(apply_preset, [preset, extra, *components], [extra, message, *components]).then(total_steps, form,
                                                                                                 steps)
    save.click(save_form, form, message).then(total_steps, form, steps)
    count.click(total_steps, form, steps)
    start.click(start_run, form, [run_id, message])
    stop.click(stop_run, [project, run_id], message)
    resume.click(resume_run, [project, run_id], [run_id, message])
    timer.tick(poll_view, [project, run_id], [status, plot, samples, saves, log]).then(queue_table, project, queue)
    return total_steps, form, steps
