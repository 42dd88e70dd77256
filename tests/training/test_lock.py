"""One training per output: `<output_dir>/<output_name>.lock` (training/lock.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorakiln.cli import main
from lorakiln.errors import TrainingError
from lorakiln.training.events import read_events
from lorakiln.training.lock import OutputLock, OutputLocked
from lorakiln.training.loop import train


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def test_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    with OutputLock(tmp_path / "out", "last", command="lorakiln train a.toml", log=None) as held:
        info = json.loads(held.path.read_text(encoding="utf-8"))
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "lorakiln train a.toml" and info["started"] <= time.time()
        with pytest.raises(OutputLocked) as err:
            OutputLock(tmp_path / "out", "last", log=None).acquire()
        assert f"PID {os.getpid()}" in str(err.value) and "lorakiln train a.toml" in str(err.value)
        OutputLock(tmp_path / "out", "other", log=None).acquire()  # another output name is free
    assert not (tmp_path / "out" / "last.lock").exists()
    with OutputLock(tmp_path / "out", "last", log=None):  # free again once released
        pass


def test_lock_on_an_empty_new_folder_leaves_no_folder(tmp_path: Path) -> None:
    with OutputLock(tmp_path / "new" / "out", "last", log=None):
        assert (tmp_path / "new" / "out" / "last.lock").is_file()
    assert not (tmp_path / "new" / "out").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(run_config, capsys) -> None:
    cfg = run_config(train__max_train_steps=2)
    out = Path(cfg.output.output_dir)
    out.mkdir(parents=True)
    dead = _dead_pid()
    (out / "last.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": 1.0,
                                               "command": "lorakiln train old.toml"}), encoding="utf-8")
    result = train(cfg, progress=True)
    assert result.steps == 2 and result.lora_path.is_file()
    text = capsys.readouterr().out
    assert "took over the stale lock" in text and f"PID {dead}" in text
    assert not (out / "last.lock").exists()  # released at the end


def test_lock_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": 1.0,
                                               "command": "lorakiln train run.toml"}), encoding="utf-8")
    with pytest.raises(OutputLocked, match="PID 1 on host elsewhere.example"):
        OutputLock(out, "last", log=None).acquire()


def test_output_dir_that_is_a_file_fails_before_the_model_loads(run_config, monkeypatch) -> None:
    import lorakiln.models.configured as configured

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(configured, "load_configured_model", no_load)
    cfg = run_config()
    Path(cfg.output.output_dir).write_text("not a folder", encoding="utf-8")
    with pytest.raises(TrainingError, match="is a file, not a folder"):
        train(cfg, progress=False)


def test_two_trainings_into_one_output(tmp_path: Path, run_toml, capsys) -> None:
    """The first (a real `lorakiln train` process) trains; the second refuses with exit 2, naming
    the first's PID; the first is untouched and still stops cleanly on SIGTERM."""
    toml = run_toml(train__max_train_steps=100000)
    events = tmp_path / "first.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "lorakiln", "train", str(toml), "--events", str(events)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_for(lambda: any(e["event"] == "step" for e in read_events(events)) or first.poll() is not None,
                  180, "the first training's first step")
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        assert main(["train", str(toml), "--set", "train.max_train_steps=1"]) == 2  # would train 1 step
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and socket.gethostname() in err and "another training" in err
        assert "Traceback" not in err
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, output
    assert "resume:" in output and not (tmp_path / "out" / "last.lock").exists()
