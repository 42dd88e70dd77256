"""Arguments and handlers for `lorakiln dataset init | check | token` (kept out of `cli.py`,
which only wires verbs; imports stay lazy so `lorakiln --help` is instant)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="folder of photos (read only; subfolders included)")
    p.add_argument("--token", required=True, help="trigger word, e.g. anantn (checked against the SD vocabulary)")
    p.add_argument("--class", dest="class_token", help="class word, e.g. man (folder `15_anantn man`)")
    p.add_argument("--repeats", default="auto", help="repeats per epoch, or 'auto' (default) to land the "
                   "kohya_ss community step range (1500–2000 for a character)")
    p.add_argument("--kind", default="character", choices=["character", "object", "style"],
                   help="what you train; sets the auto step range (style: 3000–4000)")
    p.add_argument("--steps", metavar="LOW-HIGH", help="auto step range instead of --kind's, e.g. 1200-1600")
    p.add_argument("--batch-size", type=int, default=1, help="train_batch_size the repeats are planned for")
    p.add_argument("--max-side", type=int, help="downscale images whose long side is larger (never upscales)")
    p.add_argument("--dest", "-o", help="training folder to create the `<repeats>_<token>` folder in "
                   "(default: `<source>-train` next to the source)")


def run_init(args: argparse.Namespace) -> int:
    from lorakiln.data.scan_common import shell_quote
    from lorakiln.data.token_check import check_token
    from lorakiln.errors import ConfigError
    from lorakiln.prep.init import init_dataset

    repeats: int | str = args.repeats
    if repeats != "auto":
        try:
            repeats = int(repeats)
        except ValueError:
            raise ConfigError(f"--repeats {args.repeats!r} is neither a whole number nor 'auto'") from None
    target = None
    if args.steps:
        try:
            low, high = (int(v) for v in args.steps.split("-"))
        except ValueError:
            raise ConfigError(f"--steps {args.steps!r} is not LOW-HIGH, e.g. 1500-2000") from None
        target = (low, high)
    source = Path(args.source).expanduser()
    dest = Path(args.dest) if args.dest else source.parent / f"{source.name}-train"
    result = init_dataset(source, dest, args.token, class_token=args.class_token, repeats=repeats,  # type: ignore[arg-type]
                          kind=args.kind, batch_size=args.batch_size, max_side=args.max_side, target=target)
    print(result.format())
    print(check_token(args.token).format())
    quoted = shell_quote(dest)
    print(f"next: lorakiln caption {quoted} --prefix {shell_quote(f'photo of {args.token}, ')}   then   "
          f"lorakiln dataset check {quoted}")
    return 0


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", help="training folder (kohya or ImageFolder); default: the config's "
                   "data.train_data_dir")
    p.add_argument("--config", help="run TOML: check with its resolution, buckets, batch size and epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--token", help="trigger word every caption should contain (default: each folder's)")
    p.add_argument("--resolution", help="training resolution W,H or one number (default 512)")
    p.add_argument("--caption-extension", help="caption file extension (default .txt)")
    p.add_argument("--batch-size", type=int, help="train_batch_size for the step arithmetic")
    p.add_argument("--epochs", type=int, help="max_train_epochs for the step arithmetic")
    p.add_argument("--blur-threshold", type=float, help="sharpness below which an image is reported blurry: "
                   "2 / edge width in px of its softest direction, so 1.0 is crisp (default 0.5: edges 4 px "
                   "wide; motion blur counts in its own direction)")
    p.add_argument("--no-images", action="store_true", help="skip the image measurements (fast)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too, not only on errors")


def _check_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from lorakiln.config.load import build_config, load_config
    from lorakiln.errors import ConfigError

    overrides = list(args.set or [])
    if args.folder:
        overrides.append(f"data.train_data_dir={json.dumps(str(Path(args.folder).expanduser().resolve()))}")
    if args.resolution:
        overrides.append(f"data.resolution={json.dumps(args.resolution)}")
    if args.caption_extension:
        overrides.append(f"data.caption_extension={json.dumps(args.caption_extension)}")
    if args.batch_size:
        overrides.append(f"train.train_batch_size={args.batch_size}")
    if args.epochs:
        overrides.append(f"train.max_train_epochs={args.epochs}")
    if args.no_images:
        overrides.append("data.check_images=false")
    if args.config:
        return load_config(args.config, overrides)
    if not args.folder:
        raise ConfigError("pass a training folder, or --config run.toml")
    # No run TOML: the trainer's defaults, with a placeholder model (nothing is loaded).
    return build_config({"model": {"pretrained_model": "tiny:sd1"}, "data": {}}, overrides=overrides)


def run_check(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lorakiln.prep.check import check_dataset
    from lorakiln.training.plan import lint_options

    cfg = _check_config(args)
    options = lint_options(cfg)
    if args.blur_threshold is not None:
        options = replace(options, blur_threshold=args.blur_threshold)
    report = check_dataset(cfg, token=args.token, options=options)
    print(report.to_json() if args.json else report.format())
    if report.errors or (args.strict and report.warnings):
        return 1
    return 0


def add_token_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("token", nargs="+", help="candidate trigger word(s)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_token(args: argparse.Namespace) -> int:
    from lorakiln.data.token_check import check_token
    from lorakiln.errors import ConfigError

    try:
        reports = [check_token(t) for t in args.token]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.json:
        json.dump([r.to_dict() for r in reports], sys.stdout, indent=2)
        print()
    else:
        print("\n".join(r.format() for r in reports))
    return 0 if all(r.ok for r in reports) else 1
