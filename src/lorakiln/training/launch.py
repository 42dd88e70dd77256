"""`lorakiln train RUN.toml --num-processes N`: start N local processes of the same command.

The processes are started by torch's elastic launcher (``python -m torch.distributed.run``, what
``torchrun`` and ``accelerate launch --multi_gpu`` run underneath) with a standalone rendezvous on
this machine, so the children find ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and a free master port
exactly as under ``accelerate launch``; each then trains its share (training/distributed.py).
The launcher forwards SIGINT/SIGTERM to every child (and gives them `SHUTDOWN_TIMEOUT_S` to save
a state), and when one child dies it stops the others. It runs as this module (`agent`), so its
end is a message naming the process that failed and how, not torch's ChildFailedError traceback.
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
    """This module as the launcher process (`agent`), with torchrun's own arguments."""
    return [sys.executable, "-m", "lorakiln.training.launch", "--standalone", f"--nproc-per-node={processes}",
            "-m", "lorakiln", "train", *child_args(args)]


#: Seconds the launcher gives the processes to save a state after Ctrl-C before it kills them
#: (torch's default is 30, short for a full fine-tune's state on a slow disk).
SHUTDOWN_TIMEOUT_S = 300


def agent(argv: list[str]) -> int:
    """The launcher process: torch's elastic launcher (``torch.distributed.run``, torchrun)
    with `argv`, its end told in words instead of its ChildFailedError traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except SignalException:  # Ctrl-C/SIGTERM: forwarded to every process, which saved and stopped
        return 130
    except ChildFailedError as failed:
        lines, status = failure_report({rank: (f.exitcode, f.signal_name()) for rank, f in failed.failures.items()})
        if lines:
            print("\n".join(lines), file=sys.stderr)
        return status
    return 0


def failure_report(failures: dict[int, tuple[int, str]]) -> tuple[list[str], int]:
    """What to tell the user about the processes that ended badly (rank → exit code and signal
    name) and the launcher's exit status. Status 130 from every one is a stop by a signal, which
    process 0 already reported with its resume command: nothing to add."""
    if all(code == 130 for code, _ in failures.values()):
        return [], 130
    lines = ["error: the run stopped because a process ended:"]
    for rank, (code, name) in sorted(failures.items()):
        if code < 0:
            why = f"killed by {name}" + (" (the system's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else "")
        elif code == 130:
            why = "stopped by a signal"
        else:
            why = f"exited with status {code} (its error is printed above)"
        lines.append(f"  process {rank}: {why}")
    lines.append("  The launcher stopped the others. When process 0 saved a state, its message above gives "
                 "the resume command.")
    first = next((code for code, _ in failures.values() if code > 0 and code != 130), 1)
    return lines, first


def launch(args: argparse.Namespace, processes: int) -> int:
    """Run the processes and return the launcher's exit status (130 when they were stopped)."""
    if processes < 1:
        raise ConfigError(f"--num-processes {processes}: give at least 1")
    if os.environ.get("WORLD_SIZE"):
        raise ConfigError("--num-processes inside a launched run (WORLD_SIZE is set): the launcher "
                          "(accelerate launch / torchrun) already chose the processes; drop --num-processes")
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
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


if __name__ == "__main__":
    sys.exit(agent(sys.argv[1:]))
