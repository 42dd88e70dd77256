"""Arguments and handlers for `lorakiln toy …` (the toy world: datasets, pretraining, detection)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Register `toy pretrain | dataset | detect` under the `toy` verb's sub-parsers."""
    p = sub.add_parser("pretrain", help="train the toy base model from scratch (≈1.5 h on 2 idle CPU cores)")
    p.add_argument("--out", required=True, help="the model file to write (.safetensors)")
    p.add_argument("--work", default="toy-pretrain", help="working folder (dataset, VAE, run outputs, state)")
    p.add_argument("--images", type=int, help="training images (default 20000)")
    p.add_argument("--steps", type=int, help="U-Net/text-encoder steps (default 6000)")
    p.add_argument("--vae-steps", type=int, help="VAE steps (default 4000)")
    p.add_argument("--resume", help="a state folder (<work>/run/toy-state) to continue from")
    p.set_defaults(toy_func="run_pretrain")
    p = sub.add_parser("dataset", help="write a toy-world dataset: the zwx concept (kohya folder) or world scenes")
    p.add_argument("folder", help="an empty or new folder")
    p.add_argument("--concept", action="store_true", help="the LoRA concept `zwx` (an orange star), kohya layout")
    p.add_argument("-n", type=int, default=10, help="number of images (default 10)")
    p.add_argument("--repeats", type=int, default=10, help="kohya repeats of the concept folder (default 10)")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"], help="world split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(toy_func="run_dataset")
    p = sub.add_parser("detect", help="read shape, colour and background from images (the quality detectors)")
    p.add_argument("images", nargs="+", help="PNG/JPEG files")
    p.set_defaults(toy_func="run_detect")


def run(args: argparse.Namespace) -> int:
    return int(globals()[args.toy_func](args) or 0)


def run_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lorakiln.io_guard import check_output
    from lorakiln.toyworld.pretrain import PretrainPlan, pretrain

    # both checked before the hour of work, which would otherwise end in an OS traceback
    check_output(args.work, [], verb="toy pretrain --work", force=True, folder_output=True)
    check_output(args.out, [], verb="toy pretrain --out", force=True)
    plan = PretrainPlan()
    for key, value in (("images", args.images), ("steps", args.steps), ("vae_steps", args.vae_steps)):
        if value is not None:
            plan = replace(plan, **{key: value})
    pretrain(args.work, args.out, plan, resume=args.resume)
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    from lorakiln.toyworld.dataset import write_concept_dataset, write_world_dataset

    if args.concept:
        root = write_concept_dataset(args.folder, n=args.n, seed=args.seed, repeats=args.repeats)
    else:
        root = write_world_dataset(args.folder, args.n, args.seed, split=args.split)
    print(f"wrote {args.n} images to {root}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from lorakiln.data.images import open_image_rgb
    from lorakiln.toyworld.detect import detect

    for name in args.images:
        d = detect(open_image_rgb(Path(name)))
        print(f"{name}: {d.colour} {d.shape} on {d.background}")
    return 0
