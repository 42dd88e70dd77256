"""`lorakiln train RUN.toml --num-processes N`: start N local processes of the same command.

The processes are started by torch's elastic launcher (``python -m torch.distributed.run``, what
``torchrun`` and ``accelerate launch --multi_gpu`` run underneath) with a standalone rendezvous on
this machine, so the children find ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and a free master port
exactly as under ``accelerate launch``; each then trains its share (training/distributed.py).
The launcher forwards SIGINT/SIGTERM to every child, and when one child dies it stops the others.
For several machines, run ``accelerate launch`` (or ``torchrun``) on each one yourself: the
README's "Many GPUs and machines" shows the commands.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from lorakiln.errors import ConfigError


def child_args(args: argparse.Namespace) -> list[str]:
    """The `lorakiln train` arguments every process runs: this command without --num-processes."""
    from lorakiln.training.command import train_arguments

    resume = [] if args.resume is None else ["--resume"] + ([args.resume] if args.resume else [])
    return [*train_arguments(args, list(args.set or [])), *resume]


def launch_command(args: argparse.Namespace, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "lorakiln", "train", *child_args(args)]


def launch(args: argparse.Namespace, processes: int) -> int:
    """Run the processes and return the launcher's exit status (130 when they were stopped)."""
    if processes < 1:
        raise ConfigError(f"--num-processes {processes}: give at least 1")
    if os.environ.get("WORLD_SIZE"):
        raise ConfigError("--num-processes inside a launched run (WORLD_SIZE is set): the launcher "
                          "(accelerate launch / torchrun) already chose the processes; drop --num-processes")
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of every process spinning on all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    # The launcher runs in its own session, so Ctrl-C in the terminal reaches this process only and
    # is forwarded once: torch's launcher passes it on to every child. Without this each child
    # would get the terminal's SIGINT *and* the forwarded one, and a second signal abandons the save.
    proc = subprocess.Popen(launch_command(args, processes), env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
