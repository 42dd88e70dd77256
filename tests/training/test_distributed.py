"""Many processes, one run (training/distributed.py, training/launch.py), on CPUs with gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_support import draw_dataset

from lorakiln.training.distributed import World, loss_share, shard, world_from_env

RUN_TOML = """
[model]
pretrained_model = "tiny:sd1"
[data]
train_data_dir = "train"
resolution = 64
[network]
network_dim = 4
[train]
train_batch_size = {batch}
max_train_steps = 4
learning_rate = 1e-4
seed = 3
[output]
output_dir = "{out}"
output_name = "last"
save_precision = "float"
[validation]
signals = false
"""


def test_world_from_the_launcher_environment() -> None:
    assert world_from_env({}) == World(0, 1, 0)
    world = world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and world.active and not world.is_main
    with pytest.raises(ValueError, match="RANK=4"):
        world_from_env({"WORLD_SIZE": "4", "RANK": "4"})


def test_shards_cover_a_global_batch_once_in_order() -> None:
    for total in range(0, 9):
        for size in (1, 2, 3):
            items = list(range(total))
            parts = [shard(items, World(rank, size)) for rank in range(size)]
            assert [x for part, _ in parts for x in part] == items  # every sample once, in order
            assert [first for _, first in parts] == [sum(len(p) for p, _ in parts[:r]) for r in range(size)]
            assert max(len(p) for p, _ in parts) - min(len(p) for p, _ in parts) <= 1
            # the loss shares average to the global batch's mean
            if total:
                shares = [loss_share(len(p), total, World(r, size)) for r, (p, _) in enumerate(parts)]
                assert sum(shares) / size == pytest.approx(1.0)


def _train(root: Path, name: str, batch: int, processes: int | None = None) -> subprocess.CompletedProcess[str]:
    run = root / f"{name}.toml"
    run.write_text(RUN_TOML.format(batch=batch, out=name), encoding="utf-8")
    cmd = [sys.executable, "-m", "lorakiln", "train", str(run), "--events", str(root / f"{name}.jsonl")]
    if processes:
        cmd += ["--num-processes", str(processes)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_processes_train_what_one_process_with_twice_the_batch_trains(tmp_path: Path) -> None:
    draw_dataset(tmp_path / "train")
    one = _train(tmp_path, "one", batch=2)
    two = _train(tmp_path, "two", batch=1, processes=2)
    a = load_file(tmp_path / "one" / "last.safetensors")
    b = load_file(tmp_path / "two" / "last.safetensors")
    assert a.keys() == b.keys()
    moved = sum(float(t.abs().sum()) for k, t in a.items() if "lora_up" in k)
    assert moved > 0  # the steps trained something
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    # rank 0 alone wrote: the same files, one events file with each step once, one summary
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    events = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    assert [e["event"] for e in events].count("done") == 1
    assert two.stdout.count("LoRA written") == 1
    assert "2 processes: global batch = train_batch_size 1 × 2 processes × 1 accumulation = 2" in two.stdout
    assert "LoRA written" in one.stdout
    # the 4 latents were encoded once across the run: 2 by process 0, 2 by process 1, then shared
    assert "latents: 4 cached, 2 encoded by this process, the rest by the other 1" in two.stdout


def _processes_tagged(tag: str) -> dict[str, int]:
    """RANK → pid of the training processes started with LORAKILN_TEST_TAG=tag."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("LORAKILN_TEST_TAG") == tag and "RANK" in env and "GROUP_RANK" in env:
            found[env["RANK"]] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc")
def test_a_signal_to_one_process_stops_all_with_a_saved_state_that_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import time

    draw_dataset(tmp_path / "train")
    run = tmp_path / "run.toml"
    run.write_text(RUN_TOML.format(batch=1, out="out").replace("max_train_steps = 4", "max_train_steps = 40"),
                   encoding="utf-8")
    events = tmp_path / "events.jsonl"
    tag = f"sig-{os.getpid()}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "lorakiln", "train", str(run), "--num-processes", "2", "--events", str(events)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "LORAKILN_TEST_TAG": tag},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
            if any(json.loads(line).get("event") == "step" for line in lines):
                break
            time.sleep(0.2)
        ranks = _processes_tagged(tag)
        assert set(ranks) == {"0", "1"}, ranks
        os.kill(ranks["1"], signal.SIGINT)  # the second process only
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    last = [e for e in stopped if e["event"] == "stopped"]
    assert len(last) == 1, out[-3000:]  # one events file, from process 0
    lora, state = Path(last[0]["lora"]), Path(last[0]["state"])
    assert lora.is_file() and state.is_dir()
    assert load_file(lora)  # a complete file
    step = max(e["step"] for e in stopped if e["event"] == "step")
    assert step < 40
    # a copy of the run resumes on 1 process: it continues, and says the data order changed
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("train", "out"):
        shutil.copytree(tmp_path / name, copy / name)
    shutil.copy(run, copy / "run.toml")
    alone = subprocess.run([sys.executable, "-m", "lorakiln", "train", str(copy / "run.toml"), "--resume"],
                           cwd=copy, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert "saved by a run on 2 process(es), this run has 1" in alone.stdout
    assert "the data order from here differs" in alone.stdout
    assert load_file(copy / "out" / "last.safetensors")
    # the same command with --resume continues on 2 processes to the end
    done = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "out" / "last.safetensors").is_file()
    resumed = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in resumed if e["event"] == "step"][-1] == 40


def test_pivotal_tuning_and_prior_preservation_on_two_processes(tmp_path: Path) -> None:
    """Both on 2 processes give loadable files; class images are drawn once (by process 0)."""
    draw_dataset(tmp_path / "train")
    extra = """
[pivotal]
train_text_encoder_ti = true
token_abstraction = "zwx"
initializer_concept = "toy"
[prior]
with_prior_preservation = true
class_data_dir = "class"
class_prompt = "a toy"
num_class_images = 2
class_inference_steps = 2
"""
    run = tmp_path / "run.toml"
    run.write_text(RUN_TOML.format(batch=1, out="out") + extra, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lorakiln", "train", str(run), "--num-processes", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert load_file(tmp_path / "out" / "last.safetensors")
    emb = load_file(tmp_path / "out" / "last_emb.safetensors")
    assert emb and all(torch.isfinite(t).all() for t in emb.values())
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    assert done.stdout.count("Loading weights") <= 1  # process 1 draws no loading bars


def test_a_bad_dataset_fails_once_before_any_process_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lorakiln.cli import main

    started: list[object] = []
    monkeypatch.setattr("lorakiln.training.launch.launch", lambda *a: started.append(a) or 0)
    run = tmp_path / "run.toml"
    run.write_text(RUN_TOML.format(batch=1, out="out"), encoding="utf-8")  # no train/ folder
    assert main(["train", str(run), "--num-processes", "2"]) != 0
    assert not started
    err = capsys.readouterr().err
    assert "data.train_data_dir" in err and "does not exist" in err and "Traceback" not in err
