"""The Train tab: the run-TOML form, total steps, and Start/Stop/Resume with live progress.

The form is generated from `forms.field_specs()` (so a new config key appears without UI code)
and saved through `forms.save_run_toml` (so the form cannot hold a value the CLI would refuse).
Trainings go through `runs.RunQueue` — one `lorakiln train` process at a time under
`<project>/.lorakiln-runs` — and the timer's `poll` both advances the queue and reads progress.

Handlers are plain functions whose first argument is the server's `Sandbox`; the form's values
travel as one positional value per field in `field_specs()` order (`*values`), which is what
gradio passes for a list of inputs. The run TOML is a `.toml` file inside the project, and every
path key of the config is checked by `run_guard` on save, on count and before a run is queued
(the queue checks again when the run starts), so a browser cannot point a training at files
outside the server's folders or switch pickles on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lorakiln.errors import ConfigError, LorakilnError
from lorakiln.ui.forms import GROUP_ORDER, FieldSpec, field_specs, load_run_toml, save_run_toml, step_summary
from lorakiln.ui.run_guard import check_run, check_values
from lorakiln.ui.runs import RunQueue
from lorakiln.ui.sandbox import Sandbox, SandboxError

RUNS_FOLDER = ".lorakiln-runs"
#: A new project's form: the Dataset tab's folder and an output folder inside the project.
NEW_PROJECT = {"data.train_data_dir": "train", "output.output_dir": "output"}
_BOOL3 = {"": None, "true": True, "false": False}
_QUEUES: dict[Path, RunQueue] = {}


def queue_for(box: Sandbox) -> RunQueue:
    """One queue object per project for the life of the UI: it holds the child process handles.
    Every run it starts is checked against `box` first (`run_guard.check_run`)."""
    folder = box.project / RUNS_FOLDER
    if folder not in _QUEUES:
        _QUEUES[folder] = RunQueue(folder, check=lambda config, overrides: check_run(box, config, overrides))
    return _QUEUES[folder]


def existing_queue(box: Sandbox) -> RunQueue | None:
    """The project's queue if it has one: polling alone creates no run folders."""
    folder = box.project / RUNS_FOLDER
    return queue_for(box) if folder in _QUEUES or (folder / "queue.json").is_file() else None


def toml_path(box: Sandbox, path: str | None) -> Path:
    """The run TOML: `path` (relative to the project) or `<project>/run.toml`; a `.toml` file
    inside the project (so a save can never replace another kind of file)."""
    file = box.resolve_write((path or "").strip() or "run.toml", what="run TOML")
    if file.suffix.lower() != ".toml":
        raise SandboxError(f"run TOML {path!r}: name a .toml file (e.g. run.toml)")
    return file


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

def load_form(box: Sandbox, path: str) -> tuple[Any, ...]:
    """(extra keys, message, *component values) of the run TOML, or a new project's form."""
    try:
        file = toml_path(box, path)
    except LorakilnError as err:
        return ({}, f"error: {err}", *component_values({s.key: s.default for s in field_specs()} | NEW_PROJECT))
    if file.is_file():
        try:
            values = load_run_toml(file)
        except (OSError, ValueError, LorakilnError) as err:  # tomllib raises ValueError subclasses
            values, msg = {s.key: s.default for s in field_specs()} | NEW_PROJECT, f"error: {file}: {err}"
        else:
            msg = f"loaded {file}"
            if values.get("model.allow_pickle") and not box.allow_pickle:
                msg += ("; note: it sets model.allow_pickle = true, which the UI refuses (pickles run code when "
                        "loaded): remove it or train this file with `lorakiln train`")
    else:
        values, msg = {s.key: s.default for s in field_specs()} | NEW_PROJECT, f"{file} does not exist yet: new form"
    keys = {s.key for s in field_specs()}
    return ({k: v for k, v in values.items() if k not in keys}, msg, *component_values(values))


def apply_preset(name: str, extra: dict[str, Any], *components: Any) -> tuple[Any, ...]:
    """(extra, message, *components) with preset `name`'s values written into the form: shown and
    editable like any value, and saved explicitly."""
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


def save_form(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> str:
    """Validate (config and sandbox) and write the run TOML; a bad value is reported by its key
    and nothing is written."""
    try:
        file = toml_path(box, path)
        values = form_values(extra, components)
        check_values(box, values, file)
        save_run_toml(file, values)
    except LorakilnError as err:
        return f"error: {err}"
    return f"saved {file}"


def total_steps(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> str:
    """The trainer's step arithmetic for the form as it is now (relative paths from the TOML's folder);
    the dataset is only counted when the sandbox allows its folder."""
    try:
        file = toml_path(box, path)
        values = form_values(extra, components)
        check_values(box, values, file)
    except LorakilnError as err:
        return f"error: {err}"
    return step_summary(values, file.parent)


def start_run(box: Sandbox, path: str, extra: dict[str, Any], *components: Any) -> tuple[str, str]:
    """Save the form, queue a training of it and start it if nothing else runs: (run id, message)."""
    saved = save_form(box, path, extra, *components)
    if saved.startswith("error"):
        return "", saved
    queue = queue_for(box)
    try:
        run = queue.submit(toml_path(box, path))
    except LorakilnError as err:
        return "", f"error: {err}"
    queue.poll()
    return run.id, f"{saved}; run {run.id} {queue.get(run.id).status}"


def _current(queue: RunQueue, run_id: str) -> str | None:
    runs = queue.runs()
    return (run_id or "").strip() or (runs[-1].id if runs else None)


def stop_run(box: Sandbox, run_id: str) -> str:
    """Stop the run (SIGINT: the trainer saves a LoRA and a state); a queued one is cancelled."""
    queue = existing_queue(box)
    current = _current(queue, run_id) if queue else None
    if queue is None or current is None:
        return "error: no run to stop"
    try:
        run = queue.stop(current)
    except LorakilnError as err:
        return f"error: {err}"
    return f"run {run.id}: {'cancelled' if run.status == 'cancelled' else 'stopping (saving a LoRA and state)'}"


def resume_run(box: Sandbox, run_id: str) -> tuple[str, str]:
    """Queue a continuation of a stopped run from its state: (new run id, message)."""
    queue = existing_queue(box)
    current = _current(queue, run_id) if queue else None
    if queue is None or current is None:
        return "", "error: no run to resume"
    try:
        run = queue.resume(current)
    except LorakilnError as err:
        return current, f"error: {err}"
    queue.poll()
    return run.id, f"run {run.id} resumes {current}: {queue.get(run.id).status}"


def _images(box: Sandbox, paths: list[str], limit: int = 12) -> list[Any]:
    """Loaded copies of the newest images (served from memory, not by gradio's file server),
    only from inside the project, where the UI's runs write."""
    from lorakiln.data.images import open_image_rgb

    shown = []
    for path in paths[-limit:]:
        try:
            box.resolve_write(path)
        except SandboxError:
            continue
        try:
            shown.append((open_image_rgb(Path(path)), Path(path).name))
        except OSError:
            continue
    return shown


def poll_view(box: Sandbox, run_id: str) -> tuple[str, Any, list[Any], str, str]:
    """Advance the queue, then (status, loss table, samples, saved LoRAs, log tail) of the run."""
    import pandas as pd

    empty = pd.DataFrame({"step": [], "loss": []})
    queue = existing_queue(box)
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
        loss = last.get("loss")
        lines.append(f"step {last['step']}/{last.get('total_steps', '?')}"
                     + (f" · loss {loss:.4f}" if loss is not None else "") + speed_text(last, run.status == "running"))
    others = [f"{r.id}: {r.status}" for r in queue.runs() if r.id != run.id][-5:]
    if others:
        lines.append("other runs: " + "; ".join(others))
    saves = [*progress["saves"], *([run.lora] if run.lora and run.lora not in progress["saves"] else [])]
    table = pd.DataFrame(progress["losses"], columns=["step", "loss"]) if progress["losses"] else empty
    return "  \n".join(lines), table, _images(box, progress["samples"]), "\n".join(saves), queue.log_tail(run.id)


def speed_text(last: dict[str, Any], running: bool) -> str:
    """" · 2.31 it/s · ETA 65 s" as tqdm bars write it: s/step below one step a second, no rate
    before a second step could time one, no ETA once the run is not running."""
    rate, eta = last.get("steps_per_s"), last.get("eta")
    if not rate:
        return " · measuring speed…" if running else ""
    text = f" · {rate:.2f} it/s" if rate >= 1 else f" · {1 / rate:.1f} s/step"
    return text + (f" · ETA {eta:.0f} s" if running and eta is not None else "")


QUEUE_COLUMNS = ["run", "status", "config", "step", "started", "ended", "LoRA", "message"]


def queue_table(box: Sandbox) -> Any:
    """Every run of the project's queue, newest first: what ran, how it ended, what it wrote."""
    import pandas as pd

    queue = existing_queue(box)
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

#: Path keys offered as drop-downs of the server's folders (`Sandbox.listing`), by kind.
PICKED: dict[str, str] = {"model.pretrained_model": "model", "model.vae": "vae", "network.network_weights": "lora",
                          "data.train_data_dir": "data"}


def _component(spec: FieldSpec, value: Any, box: Sandbox) -> Any:
    import gradio as gr

    label, info = spec.key, spec.help
    if spec.key in PICKED:
        kind = PICKED[spec.key]
        choices = [*([""] if spec.optional else []), *box.listing(kind)]
        where = ", ".join(map(str, box.read_roots(kind)))
        return gr.Dropdown(choices, label=label, value=value, allow_custom_value=True,
                           info=f"{info} (a path in {where}; relative paths are relative to the run TOML)")
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


def build(box: Sandbox) -> tuple[Any, Any, Any]:
    """The tab inside an open `gr.Blocks`, bound to the server's sandbox; returns (load function,
    inputs, outputs) for the app's load."""
    import gradio as gr

    from lorakiln.ui.app import bind

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
    initial = load_form(box, "run.toml")
    fields = []
    specs = field_specs()
    for group in GROUP_ORDER:
        with gr.Accordion(group, open=group != "advanced"):
            for spec, value in zip(specs, initial[2:], strict=True):
                if spec.group == group:
                    fields.append((specs.index(spec), _component(spec, value, box)))
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

    form = [path, extra, *components]
    count_steps = bind(total_steps, box)
    load.click(bind(load_form, box), [path], [extra, message, *components]).then(count_steps, form, steps)
    apply.click(apply_preset, [preset, extra, *components], [extra, message, *components]).then(count_steps, form,
                                                                                                 steps)
    save.click(bind(save_form, box), form, message).then(count_steps, form, steps)
    count.click(count_steps, form, steps)
    start.click(bind(start_run, box), form, [run_id, message])
    stop.click(bind(stop_run, box), [run_id], message)
    resume.click(bind(resume_run, box), [run_id], [run_id, message])
    timer.tick(bind(poll_view, box), [run_id], [status, plot, samples, saves, log]).then(bind(queue_table, box), None,
                                                                                          queue)
    return count_steps, form, steps
