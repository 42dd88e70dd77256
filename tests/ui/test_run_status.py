"""The Train tab's status line and buttons (ui/run_status.py): every phase of a run, the speed over
a sliding window of step events, and the states of Start/Stop/Resume — from fake progress dicts,
no training."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from lorakiln.ui.run_status import (
    buttons_state,
    current_phase,
    eta_seconds,
    format_duration,
    speed_text,
    status_line,
    steps_per_second,
)
from lorakiln.ui.runs import Run


def run(status: str = "running", **fields: Any) -> Run:
    return Run(id="0003-run", config="/p/run.toml", status=status, **fields)


def progress(last: dict | None = None, phase: dict | None = None, recent: list | None = None,
             losses: list | None = None) -> dict[str, Any]:
    return {"last": last, "phase": phase, "recent": recent or [], "losses": losses or [],
            "saves": [], "samples": [], "output_dir": None}


def step(n: int, t: float, total: int = 1500, loss: float | None = None) -> dict[str, Any]:
    return {"event": "step", "step": n, "total_steps": total, "loss": loss, "time": t}


def phase(name: str, t: float, **info: Any) -> dict[str, Any]:
    return {"event": "phase", "name": name, "time": t, **info}


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (44.6, "45 s"), (59.4, "59 s"), (200, "3 min 20 s"), (605, "10 min 5 s"),
    (3720, "1 h 02 min"), (36000, "10 h 00 min"), (-3, "0 s"),
])
def test_durations_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_queued_and_the_preparation_phases() -> None:
    assert status_line(run("queued"), progress()) == "queued"
    assert status_line(run(), progress()) == "starting"
    assert status_line(run(), progress(phase=phase("preparing", 1))) == "preparing"
    assert status_line(run(), progress(phase=phase("loading model", 2))) == "loading model"
    caching = phase("caching latents", 3, done=3, total=10)
    assert status_line(run(), progress(phase=caching)) == "caching latents 3/10"
    assert status_line(run(), progress(phase=phase("training", 4))) == "training · measuring speed…"


def test_step_line_with_a_windowed_rate_and_eta() -> None:
    recent = [(100 + i, 1000 + i / 2.31) for i in range(21)]  # 2.31 steps a second
    line = status_line(run(), progress(last=step(120, recent[-1][1]), phase=phase("training", 900),
                                       recent=recent, losses=[(119, 0.2), (120, 0.1234)]))
    assert line == "step 120/1500 · loss 0.1234 · 2.31 it/s · ETA 9 min 57 s"


def test_one_step_is_measuring_speed_and_slow_steps_read_in_seconds_per_step() -> None:
    one = progress(last=step(1, 10.0), recent=[(1, 10.0)])
    assert status_line(run(), one) == "step 1/1500 · measuring speed…"
    slow = progress(last=step(3, 30.0, total=10), recent=[(1, 10.0), (2, 20.0), (3, 30.0)])
    assert status_line(run(), slow) == "step 3/10 · 10.0 s/step · ETA 1 min 10 s"


def test_the_rate_is_a_sliding_window_not_the_run_average() -> None:
    """A slow start (the first steps, a long render) must not drag the ETA for the rest of the run."""
    slow_then_fast = [(1, 0.0), (2, 60.0)] + [(2 + i, 60.0 + i * 0.5) for i in range(1, 21)]
    window = slow_then_fast[-20:]
    assert steps_per_second(window) == pytest.approx(2.0)
    assert eta_seconds(window, 122) == pytest.approx(50.0)  # 100 steps left at 2 it/s
    assert steps_per_second([(5, 1.0), (5, 2.0)]) is None  # no step between them
    assert steps_per_second([(5, 1.0), (6, 1.0)]) is None  # no time between them
    assert eta_seconds([(1, 0.0)], 10) is None and eta_seconds(window, None) is None
    assert speed_text(window, 122, running=False) == " · 2.00 it/s"  # no ETA once ended
    assert speed_text([], 10, running=False) == ""
    assert speed_text([], 10, running=True) == " · measuring speed…"
    # the trainer's own time left counts the renders still to come
    assert speed_text(window, 122, running=True, time_left=125.0, renders_left=22) == \
        " · 2.00 it/s · ETA 2 min 5 s incl. 22 renders"


def test_render_and_save_phases_after_a_step_and_the_step_line_after_them() -> None:
    last = step(200, 50.0, total=400)
    rendering = phase("rendering samples", 51.0, done=2, total=4, folder="sample", step=200)
    assert status_line(run(), progress(last=last, phase=rendering)) == "rendering samples 2/4"
    saving = phase("saving", 52.0, step=200)
    assert status_line(run(), progress(last=last, phase=saving)) == "saving"
    grids = phase("final grids", 53.0)
    assert status_line(run(), progress(last=last, phase=grids)) == "final grids"
    same_time = phase("saving", 50.0)  # written right after the step, within the clock's resolution
    assert current_phase(progress(last=last, phase=same_time)) == same_time
    later = step(201, 60.0, total=400)  # training went on: the render is over
    assert current_phase(progress(last=later, phase=rendering)) is None
    assert status_line(run(), progress(last=later, phase=rendering)).startswith("step 201/400")


def test_stopping_while_running_then_how_runs_ended() -> None:
    last = step(60, 5.0, total=200)
    live = progress(last=last, phase=phase("saving", 6.0), recent=[(59, 4.0), (60, 5.0)])
    stopping = run(stop_requested=7.0)
    assert status_line(stopping, live) == "stopping… (saving a LoRA and state)"
    assert status_line(stopping, progress(phase=phase("caching latents", 1.0, done=1, total=9))) == "stopping…"
    assert status_line(run("stopped", stop_requested=7.0), live) == "stopped at step 60 (resume continues it)"
    assert status_line(run("stopped", message="stopped before training began"), progress()) == \
        "stopped before training began"
    for status in ("done", "cancelled", "interrupted"):
        line = status_line(run(status), live)
        assert line == status and "ETA" not in line
    failed = run("failed", message="model_dir/x.safetensors: not found\n  hint: check the path")
    assert status_line(failed, live) == r"failed: model\_dir/x.safetensors: not found"
    assert status_line(run("failed"), progress()) == "failed"


@pytest.mark.parametrize(("record", "has_state", "expected"), [
    (None, False, (True, "Start", False, False)),
    (Run("r", "c", status="queued"), False, (True, "Queue after current", True, False)),
    (Run("r", "c", status="running"), False, (True, "Queue after current", True, False)),
    (Run("r", "c", status="running", stop_requested=1.0), True, (True, "Queue after current", False, False)),
    (Run("r", "c", status="stopped"), True, (True, "Start", False, True)),
    (Run("r", "c", status="stopped"), False, (True, "Start", False, False)),
    (Run("r", "c", status="interrupted"), True, (True, "Start", False, True)),
    (Run("r", "c", status="failed"), True, (True, "Start", False, True)),
    (Run("r", "c", status="done"), True, (True, "Start", False, False)),
    (Run("r", "c", status="cancelled"), True, (True, "Start", False, False)),
])
def test_buttons(record: Run | None, has_state: bool, expected: tuple) -> None:
    state = buttons_state(record, has_state)
    assert (state["start"], state["start_label"], state["stop"], state["resume"]) == expected


def test_the_module_needs_neither_torch_nor_gradio() -> None:
    code = ("import sys, lorakiln.ui.run_status, lorakiln.ui.runs; "
            "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
