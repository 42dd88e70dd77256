"""SIGINT/SIGTERM stop every phase of a training within seconds (signals.py, loop.py): loading
and caching stop at once with nothing to save, a sample render stops and the state of that step
is saved, and the final grids are skipped (the LoRA is already complete)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorakiln.training.events import read_events
from lorakiln.training.loop import TrainingInterrupted, train
from lorakiln.training.signals import StopSignal
from lorakiln.training.state import load_state


def _signal_then_hang(signum: int = signal.SIGTERM):
    """A stand-in for a phase's work that signals this process and then would run for a minute:
    the run must stop inside it, not after it."""
    def work(*args, **kwargs):
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("the signal did not stop this phase")
    return work


@pytest.mark.parametrize(("module", "attr"), [
    ("lorakiln.models.configured", "load_configured_model"),  # loading the model
    ("lorakiln.data.loader", "TrainData.cache_all"),  # caching latents
])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_preparing_stops_at_once(run_config, monkeypatch, module, attr, signum) -> None:
    import importlib

    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    monkeypatch.setattr(owner, name, _signal_then_hang(signum))
    cfg = run_config()
    started = time.monotonic()
    with pytest.raises(StopSignal) as stop:
        train(cfg, progress=False)
    assert stop.value.signum == signum and time.monotonic() - started < 50
    assert not (Path(cfg.output.output_dir) / "last.lock").exists()  # released on the way out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_signal_during_a_sample_render_saves_that_step(run_config, monkeypatch) -> None:
    import lorakiln.inference.generate as generate_module

    monkeypatch.setattr(generate_module, "generate_many", _signal_then_hang())  # what sample renders call
    cfg = run_config(validation__validation_prompt=["photo of zwx"], validation__validation_steps=2,
                     validation__num_validation_images=1)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, progress=False)
    assert stop.value.lora.name == "last-step00000002.safetensors" and stop.value.lora.is_file()
    assert load_state(stop.value.state).position.global_step == 2


def test_sigterm_during_the_final_grids_exits_within_seconds(run_toml, tmp_path) -> None:
    """A real `lorakiln train` whose final grid has 18 cells of 100 sampling steps each: SIGTERM
    as soon as the grids start ends the process long before they could finish."""
    toml = run_toml(train__max_train_epochs=2, output__save_every_n_epochs=1,
                    validation__validation_prompt=["photo of zwx"], validation__validation_epochs=100,
                    validation__num_validation_images=1, validation__validation_inference_steps=100)
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lorakiln", "train", str(toml), "--events", str(events)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not any(e.get("name") == "final grids" for e in read_events(events)):
            assert proc.poll() is None and time.monotonic() < deadline, "the final grids never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        waited = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = tmp_path / "out"
    assert proc.returncode == 0, output
    assert waited < 20, f"SIGTERM took {waited:.1f} s to stop the grids"
    assert "SIGTERM: final grids skipped" in output and (out / "last.safetensors").is_file()
    assert not (out / "last_epochs_x_strengths.png").exists()
    done = [e for e in read_events(events) if e["event"] == "done"]
    assert len(done) == 1 and done[0]["grid"] is None
    assert not (out / "last.lock").exists()


def test_an_error_raised_after_the_signal_counts_as_the_stop() -> None:
    """Native code that calls back into Python may turn the handler's StopSignal into an error
    of its own; inside `raising()` that error still ends the phase as the stop it is."""
    from lorakiln.training.signals import StopFlag, stop_on_signals

    flag = StopFlag()
    with stop_on_signals(flag), pytest.raises(StopSignal) as stop, flag.raising():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except StopSignal:
            raise ValueError("could not determine the shape of a half-made tensor") from None
    assert stop.value.signum == signal.SIGTERM and isinstance(stop.value.__cause__, ValueError)
    other = StopFlag()
    with pytest.raises(ValueError), other.raising():  # without a signal an error stays itself
        raise ValueError("a real error")
