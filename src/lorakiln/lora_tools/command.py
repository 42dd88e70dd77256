"""Arguments and handlers for `lorakiln lora info | convert | resize | extract | merge | ziplora`
(docs/lora-tools.md).

Handlers import their modules lazily, so registering the verbs costs nothing and
`lorakiln --help` never imports torch.
"""

from __future__ import annotations

import argparse


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Register `info` and `convert` under the `lora` verb's sub-parsers."""
    p = sub.add_parser(
        "info",
        help="what a LoRA file is: format, base model, blocks, ranks/alphas, "
        "training settings, likely trigger words",
    )
    p.add_argument("file", help="a .safetensors LoRA (kohya, LyCORIS or diffusers/PEFT)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--modules", action="store_true", help="also list every module (key, rank, alpha, target)")
    p.add_argument(
        "--no-verify", action="store_true", help="read the header only: skip re-hashing the tensor data "
        "(sshs_model_hash) and checking it for NaN/inf values"
    )
    p.set_defaults(lora_func="run_info")
    p = sub.add_parser(
        "convert",
        help="convert a LoRA between the kohya and diffusers/PEFT formats "
        "(SD 1.x and SDXL; the applied weights stay the same)",
    )
    p.add_argument("input", help="the LoRA file to read (.safetensors)")
    p.add_argument("output", help="the file to write (.safetensors; for --to diffusers also a folder)")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"], help="the format to write")
    p.add_argument(
        "--family",
        choices=["sd1", "sdxl"],
        help="base model family when the file does not say (no metadata, ambiguous keys)",
    )
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.set_defaults(lora_func="run_convert")
    _add_resize_arguments(sub)
    _add_extract_arguments(sub)
    _add_merge_arguments(sub)
    _add_ziplora_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return int(globals()[args.lora_func](args) or 0)


def run_info(args: argparse.Namespace) -> int:
    import json

    from lorakiln.lora_tools.files.info import format_info, inspect_lora

    info = inspect_lora(args.file, verify_hash=not args.no_verify)
    if args.json:
        print(json.dumps(info.to_dict(with_modules=args.modules), indent=2, ensure_ascii=False))
    else:
        print(format_info(info, with_modules=args.modules))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.files.convert import convert_lora, describe_result

    result = convert_lora(args.input, args.output, args.to, family=args.family, force=args.force)
    print(describe_result(result))
    return 0


# -- resize / extract (lora_tools/resize/) ------------------------------------------------------------


def _add_rank_arguments(p: argparse.ArgumentParser, conv_help: str) -> None:
    """The rank options `resize` and `extract` share (kohya's names in the help)."""
    p.add_argument("--rank", type=int, help="the new rank of Linear and 1×1 modules; with --dynamic the most "
                   "a module may keep (kohya --new_rank / --dim)")
    p.add_argument("--conv-rank", type=int, help=conv_help)
    p.add_argument("--dynamic", choices=["sv_ratio", "sv_fro", "sv_cumulative"],
                   help="choose each module's rank from its singular values σ: sv_ratio keeps σ > σ_max/X, "
                   "sv_fro the smallest rank keeping X of the Frobenius norm, sv_cumulative X of Σσ")
    p.add_argument("--dynamic-param", type=float, metavar="X", help="the --dynamic method's ratio or target")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "float"], help="precision of the written file")
    p.add_argument("--device", help="where the SVDs run: cpu (default), cuda, cuda:1")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--verbose", action="store_true",
                   help="print every module: rank before → after and the share of its delta kept")


def _add_resize_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resize", help="lower a LoRA/LoCon's rank by SVD (fixed, or kohya's dynamic sv_ratio / "
                       "sv_fro / sv_cumulative), keeping the applied weights as close as the new rank allows")
    p.add_argument("input", help="the kohya LoRA/LoCon file to resize (.safetensors; it is not changed)")
    p.add_argument("output", help="the file to write (.safetensors)")
    _add_rank_arguments(p, "the new rank of 3×3 conv (LoCon) modules; default: --rank (kohya --new_conv_rank)")
    p.set_defaults(lora_func="run_resize")


def _add_extract_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="make a LoRA from the difference of a fine-tuned and a base model "
                       "(SD 1.x or SDXL; single files or diffusers folders)")
    p.add_argument("--base", required=True, help="the base model (what the LoRA will be applied to)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (the LoRA is tuned − base)")
    p.add_argument("output", help="the LoRA file to write (.safetensors)")
    _add_rank_arguments(p, "rank of the 3×3 convs (LoCon); 0 or unset: no conv modules (kohya --conv_dim)")
    p.add_argument("--min-diff", type=float, default=0.01, help="leave out modules, and whole text encoders, "
                   "whose largest weight change is at most this (kohya --min_diff; default 0.01)")
    p.add_argument("--no-text-encoder", action="store_true", help="U-Net modules only")
    p.add_argument("--no-unet", action="store_true", help="text-encoder modules only")
    p.set_defaults(lora_func="run_extract")


def run_resize(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.lowrank.reduction import print_module
    from lorakiln.lora_tools.resize.resize import describe_resize, resize_lora

    result = resize_lora(args.input, args.output, rank=args.rank, conv_rank=args.conv_rank, dynamic=args.dynamic,
                         dynamic_param=args.dynamic_param, save_precision=args.save_precision, device=args.device,
                         force=args.force, on_module=print_module if args.verbose else None, progress=True)
    print(describe_resize(result))
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.lowrank.reduction import print_module
    from lorakiln.lora_tools.resize.extract import describe_extract, extract_lora

    result = extract_lora(args.base, args.tuned, args.output, rank=args.rank, conv_rank=args.conv_rank,
                          dynamic=args.dynamic, dynamic_param=args.dynamic_param, min_diff=args.min_diff,
                          text_encoder=not args.no_text_encoder, unet=not args.no_unet,
                          save_precision=args.save_precision, device=args.device, force=args.force,
                          on_module=print_module if args.verbose else None, progress=True, log=print)
    if args.verbose:
        for key, diff in result.skipped.items():
            print(f"{key:<72} skipped: max|Δ| {diff:.3g} ≤ --min-diff {args.min_diff:g}")
    print(describe_extract(result))
    return 0


# -- merge (lora_tools/merge/merge.py; its parser module imports nothing heavy) -----------------


def _add_merge_arguments(sub: argparse._SubParsersAction) -> None:
    from lorakiln.lora_tools.merge import merge

    _add_rank_arguments(merge.add_arguments(sub), "LoRA output: the rank of 3×3 conv (LoCon) modules; default: "
                        "--rank (kohya svd_merge_lora --new_conv_rank)")


def run_merge(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.merge.merge import run as merge_run

    return merge_run(args)


# -- ziplora (lora_tools/ziplora/) ------------------------------------------------------------


def _add_ziplora_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ziplora", help="merge a subject LoRA and a style LoRA with ZipLoRA (learned "
                       "per-column merger vectors on the base model, Shah et al. 2023); writes an ordinary "
                       "kohya LoRA")
    p.add_argument("output", help="the merged LoRA file to write (.safetensors; the inputs are never "
                   "changed)")
    p.add_argument("--model", required=True, help="the base model both LoRAs were trained on (folder, single "
                   "file, hub id, tiny:sd1, toy)")
    p.add_argument("--subject", required=True, help="the subject LoRA (kohya LoRA/LoCon .safetensors)")
    p.add_argument("--style", required=True, help="the style LoRA (kohya LoRA/LoCon .safetensors)")
    p.add_argument("--subject-prompt", required=True, help='a prompt of the subject LoRA, e.g. "a sks dog"')
    p.add_argument("--style-prompt", required=True,
                   help='a prompt of the style LoRA, e.g. "a cat in szn style"')
    p.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100, as the paper)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the mergers (default 0.01)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.01,
                   help="weight of the Σ|cos(m_c, m_s)| term that keeps the mergers apart (default 0.01)")
    p.add_argument("--resolution", type=int, help="image side in pixels (default: the model's own, e.g. "
                   "512 SD 1.5, 1024 SDXL, 64 toy)")
    p.add_argument("--seed", type=int, default=0, help="seed of latents, noise and timesteps (default 0)")
    p.add_argument("--latents", choices=["generated", "random"], default="generated",
                   help="clean latents: sampled with each LoRA on its prompt (default) or Gaussian (fast)")
    p.add_argument("--num-latents", type=int, default=4, help="training latents per LoRA (default 4)")
    p.add_argument("--batch-size", type=int, default=1, help="latents per LoRA per step (default 1)")
    p.add_argument("--sample-steps", type=int, default=20,
                   help="sampler steps per generated latent (default 20)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                   help="autocast the model (GPU: half weights too); the mergers stay fp32")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "float"],
                   help="precision of the written file (default: the inputs')")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.set_defaults(lora_func="run_ziplora")


def run_ziplora(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.ziplora.ziplora import ZipLoRAOptions, format_report, ziplora_merge

    options = ZipLoRAOptions(steps=args.steps, lr=args.lr, lam=args.lam, resolution=args.resolution,
                             seed=args.seed, latents=args.latents, num_latents=args.num_latents,
                             batch_size=args.batch_size, sample_steps=args.sample_steps, device=args.device,
                             mixed_precision=args.mixed_precision, save_precision=args.save_precision)
    result = ziplora_merge(args.model, args.subject, args.style, args.subject_prompt, args.style_prompt,
                           args.output, options, force=args.force, progress=True)
    print(format_report(result))
    return 0
