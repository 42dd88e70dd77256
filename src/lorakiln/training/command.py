"""`lorakiln train`: load the run config, check it or train it, and say what was written.

The CLI's verb table (`lorakiln.cli`) only parses arguments; what a training command does —
turn `--resume` into the `train.resume` override, print the command that continues a stopped
run with every original option, and tell the user where each output goes in AUTOMATIC1111,
ComfyUI and diffusers — lives here, next to the loop it drives.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.errors import LorakilnError

if TYPE_CHECKING:
    from lorakiln.config.schema import RunConfig


def resume_override(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """`--resume [STATE]` as the `train.resume` override: STATE relative to the current folder,
    or without a value this output's own `<output_name>-state` (an error when it has none)."""
    import json

    from lorakiln.config.load import load_config
    from lorakiln.errors import ConfigError
    from lorakiln.training.recovery import find_state

    if args.resume is None:
        return overrides
    if args.resume:
        state = Path(args.resume).expanduser().resolve()
    else:
        out = load_config(args.config, overrides).output
        state = Path(out.output_dir) / f"{out.output_name}-state"
        try:
            find_state(state)
        except LorakilnError:
            if state.exists():  # there, but incomplete or damaged: find_state's message says how
                raise
            raise ConfigError(f"--resume: this output has no state to resume: {state} does not exist. "
                              "States are saved with output.save_state = true and on Ctrl-C/SIGTERM; "
                              "start without --resume, or name a state folder: --resume PATH") from None
    return [*_without_resume(overrides), f"train.resume={json.dumps(str(state))}"]


def _without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].strip() != "train.resume"]


def train_arguments(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """`lorakiln train`'s arguments for this command's config, preset, `overrides` and events
    file: what a resume command and each launched process (launch.py) repeat."""
    parts = [str(args.config)]
    if args.preset:
        parts += ["--preset", args.preset]
    for item in overrides:
        parts += ["--set", item]
    if args.events:
        parts += ["--events", str(args.events)]
    if getattr(args, "verbose", False):
        parts += ["--verbose"]
    return parts


def resume_command(args: argparse.Namespace, state: Path) -> str:
    """The command that continues this run from `state`: the same config, preset, overrides and
    events file, shell-quoted (shlex.quote), so pasting it resumes into the same output."""
    import shlex

    parts = ["lorakiln", "train", *train_arguments(args, _without_resume(list(args.set or [])))]
    processes = getattr(args, "num_processes", None) or _local_processes()
    if processes and processes > 1:
        parts += ["--num-processes", str(processes)]
    return shlex.join([*parts, "--resume", str(state)])


def _local_processes() -> int | None:
    """The process count of a one-machine launched run (what `--num-processes` started), else None:
    a run over several machines is resumed with the same launcher commands, not one line."""
    import os

    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    return int(world) if world and world == local else None


def client_lines(lora: Path) -> list[str]:
    """How to use the LoRA file in each client that loads it, and nothing for those that cannot:
    the file's key layout (read back from its header) is looked up in the table `lora info`
    prints (`networks.clients`), so a LoHa/LoKr or DoRA file gets no diffusers line."""
    from lorakiln.networks.clients import kohya_file_layout, loaded_by
    from lorakiln.safetensors_check import read_layout

    layout = kohya_file_layout(read_layout(lora).tensors)
    clients = loaded_by(layout)
    name = lora.stem
    lines = {
        "AUTOMATIC1111": f"AUTOMATIC1111 / Forge: copy it to models/Lora and add <lora:{name}:0.8> to the prompt",
        "ComfyUI": "ComfyUI: copy it to models/loras and use a LoraLoader node",
        "diffusers": f"diffusers: pipe.load_lora_weights(\"{lora}\")",
    }
    out = [lines[client] for client in clients]
    if "diffusers" not in clients and layout == "lycoris":
        out.append("diffusers: cannot load this file (LyCORIS layout: diffusers raises on LoHa/LoKr keys and drops "
                   "DoRA's dora_scale); use the clients above, or `lorakiln generate`, which applies it")
    return out


def _check_sharding(cfg: RunConfig, processes: int, log: Callable[[str], None] | None) -> bool:
    """What FSDP cannot run (training/sharding.py) refused once, before any process starts;
    True when the run will shard."""
    from lorakiln.training.distributed import World
    from lorakiln.training.sharding import wanted

    return wanted(cfg, World(0, processes), log)


def run(args: argparse.Namespace) -> int:
    """`lorakiln train RUN.toml [--dry-run] [--resume [STATE]] [--events FILE]`."""
    from lorakiln.config.load import load_config

    overrides = list(args.set or [])
    if args.preset:
        overrides.insert(0, f"preset={args.preset!r}".replace("'", '"'))
    cfg = load_config(args.config, resume_override(args, overrides))
    processes = getattr(args, "num_processes", None)
    if processes and processes > 1 and not args.dry_run:
        from lorakiln.training.launch import launch
        from lorakiln.training.plan import describe_plan

        describe_plan(cfg, log=None, processes=processes)  # a bad dataset is one clear error, here, not N
        _check_sharding(cfg, processes, None)
        return launch(args, processes)
    if args.dry_run:
        from lorakiln.training.device_plan import choose_device, device_line
        from lorakiln.training.plan import describe_plan
        from lorakiln.training.preflight import describe_model

        describe_plan(cfg, log=print, processes=processes or 1)
        if processes and processes > 1 and _check_sharding(cfg, processes, print):
            print(f"FSDP: the U-Net will be sharded over the {processes} processes (train.fsdp)")
        # What the run will load and where it will run: device detection stays torch-free here
        # (`device_plan`), so the dry run stays instant.
        print(describe_model(cfg))
        print(device_line(choose_device(), cfg.train.mixed_precision, cfg.train.mode))
        return 0
    from lorakiln.training.distributed import ProcessLost, world_from_env
    from lorakiln.training.loop import TrainingInterrupted, train
    from lorakiln.training.save_errors import SaveFailed
    from lorakiln.training.signals import StopSignal

    main = world_from_env().is_main
    events = None
    if args.events and main:  # rank 0 alone writes the events file and the summary
        from lorakiln.training.events import EventsFile

        events = EventsFile(args.events)
        events.write("start", config=str(args.config), output_dir=str(cfg.output.output_dir),
                     output_name=cfg.output.output_name)
    try:
        result = train(cfg, [events] if events else None, verbose=getattr(args, "verbose", False))
    except TrainingInterrupted as stop:
        if events:
            events.write("stopped", reason=str(stop), lora=stop.lora, state=stop.state)
        if main:
            print(f"stopped: {stop}\n  LoRA:  {stop.lora}\n  state: {stop.state}\n"
                  f"  resume: {resume_command(args, stop.state)}")
        return 130
    except StopSignal as stop:
        reason = f"stopped by {stop.name} before the first training step (loading or caching); nothing to save"
        if events:
            events.write("stopped", reason=reason, lora=None, state=None)
        print(reason)
        return 130
    except ProcessLost as lost:
        if events:
            events.write("error", message=str(lost), kind=type(lost).__name__, lora=lost.lora, state=lost.state)
        if lost.state is None:
            raise
        raise ProcessLost(f"{lost}\n  resume: {resume_command(args, lost.state)}", lost.lora, lost.state) from lost
    except SaveFailed as err:
        if events:
            events.write("error", message=str(err), kind=type(err).__name__)
        if err.state is None:
            raise
        raise SaveFailed(f"{err}\n  resume: {resume_command(args, err.state)}", err.state) from err
    except Exception as err:
        if events:
            events.write("error", message=str(err), kind=type(err).__name__)
        raise
    finally:
        if events:
            events.close()
    if not main:
        return 0
    name = result.lora_path.stem
    if cfg.train.mode == "full":
        print(f"\nmodel written: {result.lora_path}\n"
              f"  AUTOMATIC1111 / Forge: copy it to models/Stable-diffusion; ComfyUI: models/checkpoints\n"
              f"  lorakiln: lorakiln generate --model {result.lora_path} --prompt \"…\"")
        if result.state_path:
            print(f"  state for resume: {result.state_path}")
        return 0
    print(f"\nLoRA written: {result.lora_path}")
    for line in client_lines(result.lora_path):
        print(f"  {line}")
    emb = result.lora_path.with_name(f"{name}_emb.safetensors")
    if cfg.pivotal.train_text_encoder_ti and emb.is_file() and "," not in cfg.pivotal.token_abstraction:
        print(f"  pivotal tuning: {emb.name} goes to A1111's embeddings/ (ComfyUI: models/embeddings);\n"
              f"    write {emb.stem} where the captions said {cfg.pivotal.token_abstraction}: "
              f"\"a {emb.stem} … <lora:{name}:0.8>\" (ComfyUI: embedding:{emb.stem})")
    if result.state_path:
        print(f"  state for resume: {result.state_path}")
    if result.grid_path:
        print(f"  epochs × strengths grid: {result.grid_path}")
    if result.prompts_grid_path:
        print(f"  epochs × prompts grid:   {result.prompts_grid_path}")
    return 0
