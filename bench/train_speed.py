"""Training speed benchmark: median s/step, time to first step and peak RSS.

Runs each case in its own process (so peak RSS and start-up time are that case's alone) on
(a) the tiny SD-1.x / SDXL models (`tiny:sd1`, `tiny:sdxl`: framework overhead) and (b) the
full SD 1.5 / SDXL architectures with random weights (`random:sd15`, `random:sdxl`: real op
counts), with and without latent caching, on the quickstart images. Prints one table with the FLOPs of a step (counted by torch's
`FlopCounterMode`; the VAE encode is included when latents are not cached) and the achieved
FLOP/s; figures are measurements, not tests.

    python bench/train_speed.py                       # SD 1.5 cases (tiny, full), 12 steps each
    python bench/train_speed.py --cases tinyxl sdxl   # SDXL (the full one needs ~16 GB RAM)
    python bench/train_speed.py --cases tiny --steps 40
    python bench/train_speed.py --resolution 128 --batch 1
    python bench/train_speed.py --cases tiny --cache on --preservation none dop both   # output preservation

`--processes N` runs each case as one run on N processes (`torch.distributed.run`, gloo on CPUs,
one GPU each otherwise) with `--batch` per process, and prints samples/s per process and in total;
on CPUs the processes share the cores (`OMP_NUM_THREADS` = cores ÷ N).

    python bench/train_speed.py --cases tiny --cache on --processes 1 2

`--mode full fsdp` measures full fine-tunes (`train.mode = "full"`, the text encoder too), and
`fsdp` the same with `train.fsdp` (the U-Net sharded over the processes); the "held MiB" column is
what process 0 holds of the trained weights and their optimizer state (its shards under FSDP),
and on a GPU "peak GPU MiB" is its allocator's peak.

    python bench/train_speed.py --cases sd15 --cache on --mode full fsdp --processes 2

`--preservation` measures `[preservation]`'s extra U-Net passes (ai-toolkit's differential output
preservation `dop`, blank prompt preservation `blank`, or `both`) against `none`; the trainer prints
its estimate of that cost before training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "quickstart" / "train"
CASES = {
    "tiny": "tiny:sd1",
    "sd15": "random:sd15",
    "tinyxl": "tiny:sdxl",
    "sdxl": "random:sdxl",
}
#: `[preservation]` settings per variant.
PRESERVATION = {
    "none": {},
    "dop": {"diff_output_preservation": True, "preservation_class": "toy"},  # quickstart: `10_zwx`, "zwx, a toy"
    "blank": {"blank_prompt_preservation": True},
    "both": {"diff_output_preservation": True, "preservation_class": "toy", "blank_prompt_preservation": True},
}


def worker(args: argparse.Namespace) -> None:
    """One case: train `--steps` steps and print a JSON line of timings."""
    import resource

    import torch

    from lorakiln.config.load import build_config
    from lorakiln.training.loop import run_loop
    from lorakiln.training.prepare import prepare
    from lorakiln.training.signals import StopFlag

    stamps: list[float] = []
    first: list[float] = []

    def on_event(event: str, info: dict) -> None:
        if event == "step":
            now = time.perf_counter()
            stamps.append(now)
            if not first:
                first.append(now - T0)

    with tempfile.TemporaryDirectory() as out:
        raw = {
            "model": {"pretrained_model": CASES[args.case]},
            "data": {"train_data_dir": str(DATA), "resolution": args.resolution,
                     "min_bucket_reso": 64, "max_bucket_reso": max(128, args.resolution),
                     "cache_latents": args.cache == "on"},
            "network": {"network_dim": args.dim, "network_alpha": args.dim},
            "train": {"train_batch_size": args.batch, "max_train_steps": args.steps,
                      "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "seed": 0,
                      "detect_anomaly_every": args.steps,
                      "mode": "lora" if args.mode[0] == "lora" else "full", "fsdp": args.mode[0] == "fsdp"},
            "output": {"output_dir": out, "output_name": "bench"},
            "preservation": PRESERVATION[args.preservation[0]],
        }
        from lorakiln.training import distributed

        ctx = prepare(build_config(raw), log=None)
        run_loop(ctx, StopFlag(), [on_event], progress=False)
        held = held_bytes(ctx)
        # a sharded U-Net runs only with every process: all of them count (each its own batch)
        flops = step_flops(ctx) if ctx.world.is_main or ctx.sharded else 0.0
        distributed.barrier(ctx.world)
        distributed.shutdown(ctx.world)
        if not ctx.world.is_main:
            return
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup:]
    print(json.dumps({
        "case": args.case, "cache": args.cache, "preservation": args.preservation[0], "mode": args.mode[0],
        "held_mib": held / 2**20,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "processes": ctx.world.size,
        "median_s_per_step": statistics.median(gaps) if gaps else float("nan"),
        "time_to_first_step_s": first[0] if first else float("nan"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps_timed": len(gaps),
        "gflop_per_step": flops / 1e9,
    }))


def held_bytes(ctx) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the trained weights and their optimizer state on this process (its slices of
    sharded ones: `to_local`)."""
    import torch

    def local(t):  # type: ignore[no-untyped-def]
        return t.to_local() if hasattr(t, "to_local") else t

    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    total = sum(local(p).numel() * local(p).element_size() for p in params)
    for moments in ctx.optimizer.state.values():
        total += sum(local(v).numel() * local(v).element_size() for v in moments.values()
                     if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total


def step_flops(ctx) -> float:  # type: ignore[no-untyped-def]
    """FLOPs of one training micro-step (forward + backward), counted once with
    `FlopCounterMode` (to report achieved FLOP/s, not just seconds)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lorakiln.training.preservation import backward_preservation
    from lorakiln.training.step import compute_loss

    refs = ctx.data.epoch_batches(0)[0]
    counter = FlopCounterMode(display=False)
    with counter:  # loading inside: without a latent cache the batch is VAE-encoded here
        batch = ctx.data.load_batch(refs, epoch=0, step=0, cache=ctx.cache, encode_fn=ctx.encode_fn)
        compute_loss(ctx, batch, 0, 0).backward()
        backward_preservation(ctx, batch, 0, 0, 1)  # nothing when preservation is off
    ctx.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["tiny", "sd15"], choices=list(CASES))
    parser.add_argument("--cache", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="step intervals dropped before the median")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--preservation", nargs="+", default=["none"], choices=list(PRESERVATION))
    parser.add_argument("--mode", nargs="+", default=["lora"], choices=["lora", "full", "fsdp"],
                        help="LoRA, a full fine-tune, or a full fine-tune sharded over the processes")
    parser.add_argument("--processes", nargs="+", type=int, default=[1],
                        help="processes per run (several values: one run each)")
    parser.add_argument("--worker", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.case, args.cache = args.worker, args.cache[0]
        worker(args)
        return
    env = dict(os.environ, LORAKILN_HOME=os.environ.get("LORAKILN_HOME", tempfile.mkdtemp()))
    rows = []
    for case in args.cases:
        for cache in args.cache:
            for keep, processes, mode in [(k, n, m) for k in args.preservation for n in args.processes
                                          for m in args.mode]:
                cmd = [__file__, "--worker", case, "--cache", cache, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--resolution", str(args.resolution),
                       "--batch", str(args.batch), "--dim", str(args.dim), "--preservation", keep,
                       "--mode", mode]
                run_env = env
                if processes > 1:
                    cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *cmd]
                    run_env = dict(env, OMP_NUM_THREADS=env.get("OMP_NUM_THREADS",
                                                                str(max(1, (os.cpu_count() or 1) // processes))))
                proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=run_env,
                                      check=False)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode or not lines:
                    print(f"{case}/{cache}/{keep}/{mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(lines[-1]))
    print(f"\nresolution {args.resolution}px, batch {args.batch}, rank {args.dim}, {args.steps} steps "
          f"(first {args.warmup} intervals dropped), torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'model':8} {'latent cache':13} {'preserve':9} {'mode':5} {'procs':>5} {'median s/step':>14} "
          f"{'first step s':>13} {'peak RSS MiB':>13} {'held MiB':>9} {'peak GPU MiB':>13} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>8} {'samples/s/proc':>15} {'samples/s':>10}")
    for r in rows:
        rate = r["gflop_per_step"] / r["median_s_per_step"]
        per_proc = args.batch / r["median_s_per_step"]
        gpu = f"{r['peak_gpu_mib']:13.0f}" if r["peak_gpu_mib"] is not None else f"{'-':>13}"
        print(f"{r['case']:8} {r['cache']:13} {r['preservation']:9} {r['mode']:5} {r['processes']:5d} "
              f"{r['median_s_per_step']:14.4f} {r['time_to_first_step_s']:13.1f} {r['peak_rss_mib']:13.0f} "
              f"{r['held_mib']:9.0f} {gpu} {r['gflop_per_step']:11.1f} {rate:8.1f} "
              f"{per_proc:15.2f} {per_proc * r['processes']:10.2f}")
    rows1 = [r for r in rows if r["processes"] == 1 and r["mode"] == "lora"]
    by = {(r["case"], r["cache"]): r["median_s_per_step"] for r in rows1 if r["preservation"] == "none"}
    base = {(r["case"], r["cache"]): r for r in rows1 if r["preservation"] == "none"}
    for r in rows1:
        ref = base.get((r["case"], r["cache"]))
        if r["preservation"] != "none" and ref:
            print(f"{r['case']}/{r['cache']}: {r['preservation']} preservation costs "
                  f"{r['median_s_per_step'] / ref['median_s_per_step'] - 1:+.0%} step time, "
                  f"{r['gflop_per_step'] / ref['gflop_per_step'] - 1:+.0%} FLOPs")
    for case in args.cases:
        if (case, "on") in by and (case, "off") in by:
            print(f"{case}: caching latents makes a step {by[(case, 'off')] / by[(case, 'on')]:.2f}x faster")


if __name__ == "__main__":
    main()
