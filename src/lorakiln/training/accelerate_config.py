"""`lorakiln config accelerate`: an accelerate config file for `accelerate launch -m lorakiln train`.

`accelerate launch --config_file FILE` reads the process layout from a YAML file (what
`accelerate config` asks for interactively). The file written here is the layout lorakiln runs
on: data-parallel processes started by torch's elastic launcher (``distributed_type: MULTI_GPU``,
which accelerate runs through ``torch.distributed.run``), one per GPU, on one or several machines.
lorakiln reads only the launcher's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (training/distributed.py),
so the same file also runs on a machine without GPUs: the processes then use gloo on the CPU.

Precision is not the launcher's to choose: ``mixed_precision: 'no'`` here, and the run config's
``train.mixed_precision`` decides (accelerate's value would only set an environment variable
lorakiln does not read). With ``fsdp`` the file says ``distributed_type: FSDP``: accelerate then
sets ``ACCELERATE_USE_FSDP`` for the processes, and a full fine-tune shards its U-Net over them
(training/sharding.py, as ``train.fsdp = true`` does); how it shards is lorakiln's (one FSDP unit
per U-Net block), not the file's other FSDP keys. LoRA runs stay data-parallel either way: their
trained weights are small. DeepSpeed layouts are not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """Processes per machine and where this machine sits among the machines."""

    processes_per_machine: int
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500
    #: Shard full fine-tunes (FSDP) instead of plain data parallelism.
    fsdp: bool = False

    def check(self) -> None:
        """Refuse a layout accelerate would refuse later, or that would wait forever."""
        if self.processes_per_machine < 1:
            raise ConfigError(f"--num-processes {self.processes_per_machine}: give at least 1 (one per GPU)")
        if self.num_machines < 1:
            raise ConfigError(f"--num-machines {self.num_machines}: give at least 1")
        if not 0 <= self.machine_rank < self.num_machines:
            raise ConfigError(f"--machine-rank {self.machine_rank}: must be 0 … {self.num_machines - 1} "
                              f"(--num-machines {self.num_machines}); the main machine is 0")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ConfigError("--num-machines > 1 needs --main-process-ip: the address of machine 0, "
                              "which every machine can reach")
        if not 0 < self.main_process_port < 65536:
            raise ConfigError(f"--main-process-port {self.main_process_port}: not a TCP port (1 … 65535)")


def config_dict(layout: Layout) -> dict[str, Any]:
    """The accelerate config (`accelerate.commands.config.config_args.ClusterConfig` keys)."""
    layout.check()
    total = layout.processes_per_machine * layout.num_machines
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        # one process: accelerate's simple launcher (no process group); more: torch.distributed.run
        "distributed_type": ("FSDP" if layout.fsdp else "MULTI_GPU") if total > 1 else "NO",
        "num_processes": total,  # accelerate counts the processes of all machines together
        "num_machines": layout.num_machines,
        "machine_rank": layout.machine_rank,
        "gpu_ids": "all",
        "mixed_precision": "no",  # train.mixed_precision decides (module docstring)
        "use_cpu": False,
        "downcast_bf16": "no",
        "debug": False,
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if layout.fsdp and total > 1:  # read by accelerate's launcher; lorakiln shards per U-Net block itself
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_reshard_after_forward": True,
                                 "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_offload_params": False,
                                 "fsdp_cpu_ram_efficient_loading": False}
    if layout.num_machines > 1:
        config["main_process_ip"] = layout.main_process_ip
        config["main_process_port"] = layout.main_process_port
    return config


def render(layout: Layout) -> str:
    """The YAML text, with a header saying how to use it."""
    import yaml

    total = layout.processes_per_machine * layout.num_machines
    header = [
        "# accelerate config for lorakiln, written by `lorakiln config accelerate`.",
        f"# {layout.num_machines} machine(s) x {layout.processes_per_machine} process(es) = {total} "
        "process(es), data-parallel: the global batch is train_batch_size x processes"
        + (" (full fine-tunes shard their U-Net over them: FSDP)." if layout.fsdp else "."),
        "#   accelerate launch --config_file THIS_FILE -m lorakiln train run.toml",
    ]
    if layout.num_machines > 1:
        header.append("# Run that on every machine, each with its own file: machine_rank differs "
                      "(0 on the main machine).")
    header.append("# Precision comes from the run's train.mixed_precision, not from this file.")
    return "\n".join(header) + "\n" + yaml.safe_dump(config_dict(layout), sort_keys=False)


def write(layout: Layout, path: Path, *, force: bool = False) -> Path:
    """Write the config to `path` (io_guard's rules: an existing file only with `force`)."""
    from lorakiln.atomic import write_text_atomic
    from lorakiln.io_guard import check_output

    text = render(layout)  # a bad layout fails before anything is written
    out = check_output(path, [], verb="config accelerate", force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out
