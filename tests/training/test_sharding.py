"""A full fine-tune sharded over processes (training/sharding.py: FSDP), on CPUs with gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_support import draw_dataset

from lorakiln.config.load import load_config
from lorakiln.errors import ConfigError
from lorakiln.training import sharding
from lorakiln.training.distributed import World

RUN_TOML = """
[model]
pretrained_model = "tiny:sd1"
[data]
train_data_dir = "train"
resolution = 64
[train]
mode = "full"
fsdp = {fsdp}
train_batch_size = {batch}
max_train_steps = {steps}
learning_rate = 1e-4
max_grad_norm = 1.0
{extra}
seed = 3
[output]
output_dir = "{out}"
output_name = "last"
save_precision = "float"
save_state = true
[validation]
validation_prompt = "zwx toy"
validation_steps = 2
num_validation_images = 1
validation_inference_steps = 2
signals = false
"""


def _write(root: Path, name: str, *, batch: int, steps: int, fsdp: bool = True, extra: str = "") -> Path:
    run = root / f"{name}.toml"
    run.write_text(RUN_TOML.format(fsdp=str(fsdp).lower(), batch=batch, steps=steps, extra=extra, out=name),
                   encoding="utf-8")
    return run


def _train(root: Path, run: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lorakiln", "train", str(run), *args]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _train_here(run: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """One process, in this one (no start-up of its own): what `lorakiln train` printed."""
    from lorakiln.cli import main

    capsys.readouterr()
    assert main(["train", str(run), *args]) == 0
    return capsys.readouterr().out


def test_two_sharded_processes_train_what_one_process_trains_and_resume_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 sharded processes × batch 1 train what 1 process × batch 2 trains, rank 0 alone writing;
    their state (whole weights, EMA, an optimizer state keyed by parameter name) resumes exactly
    on 2 processes and continues on 1 without FSDP. With gradient checkpointing, which recomputes
    each block's forward, gathers included, in backward."""
    draw_dataset(tmp_path / "train")
    extra = "ema_decay = 0.9\ngradient_checkpointing = true"
    one = _train_here(_write(tmp_path, "one", batch=2, steps=4, fsdp=False, extra=extra), capsys)
    # sharded because the environment says what `accelerate launch` with an FSDP config says
    # (ACCELERATE_USE_FSDP; test_accelerate_config has the file); train.fsdp stays false
    two = _train(tmp_path, _write(tmp_path, "two", batch=1, steps=4, fsdp=False, extra=extra),
                 "--num-processes", "2", "--events", str(tmp_path / "two.jsonl"), env={"ACCELERATE_USE_FSDP": "true"})
    assert "FSDP: the U-Net's 2.4 M weights are sharded over 2 processes (1.2 M here" in two.stdout
    assert "FSDP" not in one
    a, b = load_file(tmp_path / "one" / "last.safetensors"), load_file(tmp_path / "two" / "last.safetensors")
    assert a.keys() == b.keys()
    # The same model. Adam's first steps move each weight by about ±lr whatever the gradient's size,
    # so a weight whose gradient is rounding noise (the two processes' halves cancel) may move
    # differently: a few in a million, by under half a step (lr = 1e-4).
    far = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a)
    assert far <= 1e-5 * sum(t.numel() for t in a.values()), far
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=5e-5, msg=key)
    # rank 0 alone wrote: the same files, the renders once, one events file and one summary
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(list((tmp_path / "two" / "validation").rglob("*.png"))) == len(
        list((tmp_path / "one" / "validation").rglob("*.png"))) > 0
    events = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events].count("done") == 1
    assert two.stdout.count("model written") == 1

    # half the run with train.fsdp, then --resume to the end: the same files as the whole run
    half = _write(tmp_path, "half", batch=1, steps=2, extra=extra)
    _train(tmp_path, half, "--num-processes", "2")
    start = load_file(tmp_path / "half" / "last.safetensors")
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 1e-5  # the last two steps trained
    state = torch.load(tmp_path / "half" / "last-state" / "optimizer.pt", weights_only=True)
    assert sharding.named_state(state) and "unet.conv_in.weight" in state["state"]
    shutil.copytree(tmp_path / "half", tmp_path / "alone")
    half.write_text(half.read_text(encoding="utf-8").replace("max_train_steps = 2", "max_train_steps = 4"),
                    encoding="utf-8")
    resumed = _train(tmp_path, half, "--num-processes", "2", "--resume")
    assert "resumed from" in resumed.stdout
    c = load_file(tmp_path / "half" / "last.safetensors")
    for key in b:
        assert torch.equal(b[key], c[key]), key
    # the same state on one process, unsharded: it continues, and says the data order changed
    alone = tmp_path / "alone.toml"
    alone.write_text(half.read_text(encoding="utf-8").replace("fsdp = true", "fsdp = false")
                     .replace('output_dir = "half"', 'output_dir = "alone"'), encoding="utf-8")
    single = _train_here(alone, capsys, "--resume")
    assert "saved by a run on 2 process(es), this run has 1" in single
    assert load_file(tmp_path / "alone" / "last.safetensors").keys() == a.keys()


def _config(tmp_path: Path, **train: object) -> object:
    (tmp_path / "train").mkdir(exist_ok=True)
    values = {"mode": "full", "fsdp": True, **train}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    run = tmp_path / "run.toml"
    run.write_text(f'[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\n[train]\n{lines}\n',
                   encoding="utf-8")
    return load_config(run)


def test_what_cannot_run_sharded_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    two = World(0, 2)
    with pytest.raises(ConfigError, match="optimizer_type = 'AdamW8bit'.*use optimizer_type = 'AdamW'"):
        sharding.wanted(_config(tmp_path, optimizer_type="AdamW8bit"), two, None, env={})
    with pytest.raises(ConfigError, match="'fp16' with FSDP.*bf16"):
        sharding.wanted(_config(tmp_path, mixed_precision="fp16"), two, None, env={})
    assert sharding.wanted(_config(tmp_path), two, None, env={})
    notes: list[str] = []
    assert not sharding.wanted(_config(tmp_path), World(), notes.append, env={})
    lora = _config(tmp_path, mode="lora", fsdp=False)
    assert not sharding.wanted(lora, two, notes.append, env={"ACCELERATE_USE_FSDP": "true"})
    assert sharding.wanted(_config(tmp_path, fsdp=False), two, None, env={"ACCELERATE_USE_FSDP": "true"})
    assert "nothing to shard" in notes[0] and "this LoRA run is data-parallel" in notes[1]


def test_train_fsdp_on_a_lora_run_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.fsdp shards a full fine-tune"):
        _config(tmp_path, mode="lora")


def test_an_optimizer_state_keyed_by_name_loads_into_an_unsharded_run() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": list(net[1].parameters()), "lr": 1e-3},
                             {"params": list(net[0].parameters()), "lr": 1e-2}])
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    names = ["1.weight", "1.bias", "0.weight", "0.bias"]
    named = sharding.by_name(saved, names)
    assert sharding.named_state(named) and not sharding.named_state(saved)
    assert named["param_groups"][1]["params"] == ["0.weight", "0.bias"]
    fresh = torch.optim.AdamW([{"params": list(net[1].parameters()), "lr": 1e-3},
                               {"params": list(net[0].parameters()), "lr": 1e-2}])
    sharding.load_optimizer_state(net, fresh, named, sharded=False)
    for i, moments in saved["state"].items():
        for key, value in moments.items():
            assert torch.equal(fresh.state_dict()["state"][i][key], value)
    with pytest.raises(ValueError, match="lacks"):
        sharding.by_index({"state": {}, "param_groups": [{"params": ["2.weight"]}]}, names)


def test_a_lost_process_in_a_sharded_run_names_the_last_saved_file_and_state(tmp_path: Path) -> None:
    """Nothing can be gathered without the lost process: rank 0 saves nothing and says what the
    last save left (the CLI then prints the resume command for that state)."""
    from types import SimpleNamespace

    from lorakiln.training.distributed import ProcessLost
    from lorakiln.training.saving import after_loss

    (tmp_path / "last-state").mkdir()
    last = tmp_path / "last-step00000002.safetensors"
    ctx = SimpleNamespace(world=World(0, 2), sharded=True, position=SimpleNamespace(global_step=3),
                          output_dir=tmp_path, cfg=SimpleNamespace(output=SimpleNamespace(output_name="last")),
                          last_saved=last)
    lost = after_loss(ctx, ProcessLost("another process of this run stopped answering"), logger=None)
    assert (lost.lora, lost.state) == (last, tmp_path / "last-state")
    assert "sharded over the processes (FSDP), so step 3 cannot be gathered" in str(lost)
    assert list(tmp_path.iterdir()) == [tmp_path / "last-state"]  # nothing written


def test_fsdp_limits_fail_once_before_any_process_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from lorakiln.cli import main

    started: list[object] = []
    monkeypatch.setattr("lorakiln.training.launch.launch", lambda *a: started.append(a) or 0)
    draw_dataset(tmp_path / "train")
    run = _write(tmp_path, "run", batch=1, steps=2, extra='optimizer_type = "Prodigy"')
    assert main(["train", str(run), "--num-processes", "2"]) != 0
    assert not started
    err = capsys.readouterr().err
    assert "optimizer_type = 'Prodigy' with FSDP" in err and "Traceback" not in err
    run.write_text(run.read_text(encoding="utf-8").replace('optimizer_type = "Prodigy"', ""), encoding="utf-8")
    assert main(["train", str(run), "--num-processes", "2", "--dry-run"]) == 0
    assert "FSDP: the U-Net will be sharded over the 2 processes" in capsys.readouterr().out
