"""Arguments and handlers for `lorakiln lora info | convert` (docs/lora-tools.md).

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
        "--no-verify", action="store_true", help="skip re-hashing the tensor data to check sshs_model_hash"
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


def run(args: argparse.Namespace) -> int:
    return int(globals()[args.lora_func](args) or 0)


def run_info(args: argparse.Namespace) -> int:
    import json

    from lorakiln.lora_tools.inspect import format_info, inspect_lora

    info = inspect_lora(args.file, verify_hash=not args.no_verify)
    if args.json:
        print(json.dumps(info.to_dict(with_modules=args.modules), indent=2, ensure_ascii=False))
    else:
        print(format_info(info, with_modules=args.modules))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from lorakiln.lora_tools.convert import convert_lora, describe_result

    result = convert_lora(args.input, args.output, args.to, family=args.family, force=args.force)
    print(describe_result(result))
    return 0
