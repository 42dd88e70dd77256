"""`lorakiln config accelerate` (training/accelerate_config.py): a file `accelerate launch` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from training_support import draw_dataset

from lorakiln.cli import main
from lorakiln.training.accelerate_config import Layout, config_dict


def test_the_layout_of_several_machines() -> None:
    config = config_dict(Layout(8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1"))
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["num_processes"] == 16  # accelerate counts every machine's processes
    assert (config["num_machines"], config["machine_rank"]) == (2, 1)
    assert (config["main_process_ip"], config["main_process_port"]) == ("10.0.0.1", 29500)
    assert config["mixed_precision"] == "no"  # train.mixed_precision decides
    assert config_dict(Layout(1))["distributed_type"] == "NO"


@pytest.mark.parametrize(("layout", "message"), [
    (Layout(0), "--num-processes 0"),
    (Layout(2, num_machines=2), "--main-process-ip"),
    (Layout(2, num_machines=2, machine_rank=2, main_process_ip="h"), "--machine-rank 2: must be 0 … 1"),
    (Layout(2, main_process_port=70000), "not a TCP port"),
])
def test_a_layout_that_cannot_run_is_refused(layout: Layout, message: str) -> None:
    from lorakiln.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_dict(layout)


def test_the_written_file_is_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "acc.yaml"
    assert main(["config", "accelerate", "--num-processes", "2", "-o", str(out)]) == 0
    assert "accelerate launch --config_file" in capsys.readouterr().out
    out.write_text("mine", encoding="utf-8")
    assert main(["config", "accelerate", "--num-processes", "4", "-o", str(out)]) != 0
    assert out.read_text(encoding="utf-8") == "mine"
    assert "--force" in capsys.readouterr().err
    assert main(["config", "accelerate", "--num-processes", "4", "-o", str(out), "--force"]) == 0
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["num_processes"] == 4


def test_accelerate_launch_runs_a_two_process_training_from_the_written_file(tmp_path: Path) -> None:
    """The file is what accelerate launch reads: 2 processes (gloo on this CPU) train one LoRA."""
    draw_dataset(tmp_path / "train")
    config = tmp_path / "accelerate.yaml"
    assert main(["config", "accelerate", "--num-processes", "2", "-o", str(config)]) == 0
    run = tmp_path / "run.toml"
    run.write_text('[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\nresolution = 64\n'
                   "[network]\nnetwork_dim = 4\n[train]\nmax_train_steps = 2\nseed = 1\n"
                   '[output]\noutput_dir = "out"\noutput_name = "last"\n[validation]\nsignals = false\n',
                   encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "-m", "lorakiln", "train", str(run)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 processes: global batch = train_batch_size 1 × 2 processes" in done.stdout
    assert done.stdout.count("LoRA written") == 1
    assert load_file(tmp_path / "out" / "last.safetensors")


def test_an_fsdp_layout_asks_accelerate_for_fsdp() -> None:
    config = config_dict(Layout(4, fsdp=True))
    assert config["distributed_type"] == "FSDP"  # accelerate launch then sets ACCELERATE_USE_FSDP
    assert config["fsdp_config"]["fsdp_version"] == 2
    assert config_dict(Layout(1, fsdp=True))["distributed_type"] == "NO"  # one process: nothing to shard
    assert "fsdp_config" not in config_dict(Layout(4))


def test_accelerate_reads_the_fsdp_file_as_fsdp_for_the_processes(tmp_path: Path) -> None:
    """What `accelerate launch --config_file` makes of an `--fsdp` file, without starting anything:
    its FSDP launcher, which tells the processes ACCELERATE_USE_FSDP (training/sharding.py reads it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = tmp_path / "fsdp.yaml"
    assert main(["config", "accelerate", "--num-processes", "2", "--fsdp", "-o", str(config)]) == 0
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "lorakiln", "train", "run.toml"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 2
    assert prepare_multi_gpu_env(args)["ACCELERATE_USE_FSDP"] == "true"
