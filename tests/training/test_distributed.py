"""Many processes, one run (training/distributed.py, training/launch.py), on CPUs with gloo."""

from __future__ import annotations

import contextlib
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


def test_only_a_lost_peer_reads_as_a_lost_process() -> None:
    from lorakiln.training.distributed import ProcessLost, collective

    closed = "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:7563"
    with pytest.raises(ProcessLost, match="during the gradient average.*Connection closed by peer"), \
            collective("the gradient average"):
        raise RuntimeError(closed)
    with pytest.raises(torch.OutOfMemoryError), collective("the gradient average"):  # stays itself
        raise torch.OutOfMemoryError("CUDA out of memory")
    # narrow (FSDP's collectives inside a training step): the model's own errors pass through
    with pytest.raises(RuntimeError, match="mat1 and mat2"), collective("a training step", narrow=True):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    with pytest.raises(ProcessLost), collective("a training step", narrow=True):
        raise RuntimeError(closed)


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


def _draw_shapes(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """One captioned image per name, of the given (width, height), in a repeat-1 kohya folder."""
    from PIL import Image

    sub = root / "1_zwx toy"
    sub.mkdir(parents=True)
    for i, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)).save(sub / f"{name}.png")
        (sub / f"{name}.txt").write_text(f"photo of zwx, a toy, {name}", encoding="utf-8")


def test_buckets_of_different_shapes_are_shared_by_both_processes_and_each_image_is_seen_once(
        tmp_path: Path) -> None:
    """3 square, 2 wide and 1 tall image: every step's batches on both processes come from one
    bucket, and each epoch trains each image once across the processes (`--verbose` prints each
    process's batches); a bucket's odd last sample leaves process 1 a zero-weighted stand-in."""
    import re

    sizes = {"sq0": (64, 64), "sq1": (64, 64), "sq2": (64, 64), "wide0": (128, 64), "wide1": (128, 64),
             "tall0": (64, 128)}
    _draw_shapes(tmp_path / "train", sizes)
    run = tmp_path / "run.toml"
    text = RUN_TOML.format(batch=1, out="out").replace("max_train_steps = 4", "max_train_epochs = 2")
    text = text.replace("resolution = 64", 'resolution = "128,64"\nenable_bucket = true\nmin_bucket_reso = 64\n'
                        "max_bucket_reso = 128\nbucket_reso_steps = 64")
    run.write_text(text, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lorakiln", "train", str(run), "--num-processes", "2", "--verbose"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = re.compile(r"^\[process (\d)\] step (\d+) \(epoch (\d+), micro-batch 1\): bucket (\d+)x(\d+): (.*)$")
    seen: dict[int, dict[int, tuple[int, int, int, str]]] = {}  # step -> rank -> (epoch, w, h, images)
    for found in filter(None, map(line.match, done.stdout.splitlines())):
        rank, step, epoch, w, h, images = found.groups()
        seen.setdefault(int(step), {})[int(rank)] = (int(epoch), int(w), int(h), images)
    # global batch 2 from buckets of 3, 2 and 1 images: 4 steps an epoch, 2 epochs
    assert sorted(seen) == list(range(1, 9)), done.stdout[-3000:]
    per_epoch: dict[int, list[str]] = {1: [], 2: []}
    for step, ranks in seen.items():
        assert set(ranks) == {0, 1}, (step, ranks)
        (e0, *bucket0, first), (e1, *bucket1, second) = ranks[0], ranks[1]
        assert e0 == e1 and bucket0 == bucket1, (step, ranks)  # one bucket per step on both processes
        for images in (first, second):
            if not images.startswith("none"):
                assert len(images.split(", ")) == 1  # batch 1 per process
                name = Path(images).stem
                expected = {(64, 64): "sq", (128, 64): "wide", (64, 128): "tall"}[tuple(bucket0)]
                assert name.startswith(expected), (step, name, bucket0)
                per_epoch[e0].append(name)
    for names in per_epoch.values():
        assert sorted(names) == sorted(sizes)  # each image once per epoch, none dropped or repeated
    assert sum(images.startswith("none") for ranks in seen.values() for _, _, _, images in ranks.values()) == 4
    assert load_file(tmp_path / "out" / "last.safetensors")


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


def _two_process_run(root: Path, steps: int) -> tuple[Path, Path, list[str]]:
    """A dataset, a `steps`-step run TOML and its `--num-processes 2` command with an events file."""
    draw_dataset(root / "train")
    run = root / "run.toml"
    run.write_text(RUN_TOML.format(batch=1, out="out").replace("max_train_steps = 4", f"max_train_steps = {steps}"),
                   encoding="utf-8")
    events = root / "events.jsonl"
    return run, events, [sys.executable, "-m", "lorakiln", "train", str(run), "--num-processes", "2",
                         "--events", str(events)]


def _start_two_processes(cmd: list[str], cwd: Path, events: Path, steps: int,
                         env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Start `cmd` (a `--num-processes 2` training) and wait for `steps` step events: the
    launcher and RANK → pid of its two training processes."""
    import os
    import time

    tag = f"run-{os.getpid()}-{time.time_ns()}"
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {}), "LORAKILN_TEST_TAG": tag},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
        if sum(json.loads(line).get("event") == "step" for line in lines) >= steps:
            break
        time.sleep(0.2)
    return proc, _processes_tagged(tag)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc")
def test_a_signal_to_one_process_stops_all_with_a_saved_state_that_resumes(tmp_path: Path) -> None:
    import os
    import signal

    run, events, cmd = _two_process_run(tmp_path, steps=40)
    proc, ranks = _start_two_processes(cmd, tmp_path, events, steps=1)
    try:
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


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc")
def test_a_process_that_stops_answering_ends_the_run_with_a_saved_state_and_a_message(tmp_path: Path) -> None:
    """Process 1 frozen (SIGSTOP) mid-run: process 0's next collective times out after
    LORAKILN_DIST_TIMEOUT, it saves the last complete step's LoRA and state alone, and the run
    ends with a message and the resume command instead of hanging; no traceback."""
    import os
    import signal
    import time

    from lorakiln.training.recovery import find_state

    _, events, cmd = _two_process_run(tmp_path, steps=400)
    proc, ranks = _start_two_processes(cmd, tmp_path, events, steps=2,
                                       env={"LORAKILN_DIST_TIMEOUT": "8", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "3"})
    try:
        assert set(ranks) == {"0", "1"}, ranks
        os.kill(ranks["1"], signal.SIGSTOP)  # alive, but never answers again
        started = time.monotonic()
        out, _ = proc.communicate(timeout=240)
        waited = time.monotonic() - started
    finally:
        for pid in ranks.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, 130), out[-3000:]
    assert waited < 120, waited  # the 8 s timeout, a save and the launcher's 3 s, not a hang
    assert "another process of this run stopped answering" in out and "LORAKILN_DIST_TIMEOUT = 8 s" in out, out[-3000:]
    assert "process 0: exited with status 2" in out and "resume: lorakiln train" in out, out[-3000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-3000:]
    error = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()][-1]
    assert error["event"] == "error" and error["kind"] == "ProcessLost"
    assert load_file(error["lora"]) and find_state(Path(error["state"]))
    step = max(json.loads(line).get("step") or 0 for line in events.read_text(encoding="utf-8").splitlines())
    assert Path(error["lora"]).name == f"last-step{step:08d}.safetensors"  # the last complete step


def test_the_launcher_reports_failed_processes_in_words() -> None:
    from lorakiln.training.launch import failure_report

    assert failure_report({0: (130, "<N/A>"), 1: (130, "<N/A>")}) == ([], 130)  # a stop, told by process 0
    lines, status = failure_report({1: (-9, "SIGKILL"), 0: (2, "<N/A>")})
    assert status == 2
    assert lines[1:3] == ["  process 0: exited with status 2 (its error is printed above)",
                          "  process 1: killed by SIGKILL (the system's out-of-memory killer sends SIGKILL)"]


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
