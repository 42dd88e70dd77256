"""`lorakiln generate` and `lorakiln grid`: A1111 parameters in, images out.

Parameters come the way AUTOMATIC1111 users have them — a pasted parameters block, a PNG with
its `parameters` text, or a file — with the explicit flags on top; the output folder is checked
before the base model loads, so a typo does not cost the loading and sampling.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def generation_params(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """A1111 parameters from --params (text, file, PNG or -), then the explicit flags on top."""
    from dataclasses import replace

    from lorakiln.errors import ConfigError
    from lorakiln.inference.infotext import GenerationParams, parse_infotext, read_png_infotext

    params = GenerationParams()
    if args.params:
        source = Path(args.params)
        if args.params == "-":
            text = sys.stdin.read()
        elif source.suffix.lower() == ".png" and source.is_file():
            text = read_png_infotext(source) or ""
            if not text:
                raise ConfigError(f"{source} has no A1111 `parameters` text")
        elif source.is_file():
            text = source.read_text(encoding="utf-8")
        else:
            text = args.params
        params = parse_infotext(text)
    if args.size:
        w, _, h = args.size.lower().partition("x")
        if not (w.isdigit() and h.isdigit()):
            raise ConfigError(f"--size {args.size!r} is not WxH such as 512x512")
        params = replace(params, width=int(w), height=int(h))
    flags = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "steps": args.steps,
             "sampler": args.sampler, "schedule_type": args.schedule_type, "cfg_scale": args.cfg_scale,
             "seed": args.seed, "width": args.width, "height": args.height, "batch_count": args.batch_count,
             "batch_size": args.batch_size, "clip_skip": args.clip_skip}
    params = replace(params, **{k: v for k, v in flags.items() if v is not None})
    if not params.prompt:
        raise ConfigError("no prompt: pass --prompt or --params with an A1111 parameters block")
    return params


def check_output_dir(folder: str, verb: str) -> Path:
    """Refuse an --output-dir that is a file, lies under one or is not writable, before the base
    model loads: found when the images are saved, the mistake cost the loading and sampling and
    ended in an OS traceback."""
    from lorakiln.io_guard import check_output

    return check_output(folder, [], verb=verb, force=True, folder_output=True)


def generate_command(args: argparse.Namespace) -> int:
    """`lorakiln generate`: A1111 txt2img with LoRAs and embeddings, PNGs with their infotext."""
    params = generation_params(args)
    check_output_dir(args.output_dir, "generate --output-dir")
    from lorakiln.inference.generate import generate, save_images
    from lorakiln.models.configured import load_configured_model

    bundle = load_configured_model(args.model, vae=args.vae, allow_pickle=args.allow_pickle)
    images = generate(bundle, params, lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir, progress=True)
    for path in save_images(images, args.output_dir):
        print(path)
    return 0


def grid_command(args: argparse.Namespace) -> int:
    """`lorakiln grid`: A1111's X/Y/Z plot, or epochs × strengths of a run's saved LoRAs."""
    from lorakiln.errors import ConfigError
    from lorakiln.inference.grid import epochs_strengths, parse_axis

    if args.compare_epochs:
        args.lora_dir = args.lora_dir or args.compare_epochs
    params = generation_params(args)
    if args.compare_epochs:
        params, x, y = epochs_strengths(args.compare_epochs, params, args.x, args.y)
    else:
        if not args.x:
            raise ConfigError("grid needs --x (or --compare-epochs)")
        x, y = parse_axis(args.x), parse_axis(args.y) if args.y else None
    z = parse_axis(args.z) if args.z else None
    out = check_output_dir(args.output_dir, "grid --output-dir")
    from lorakiln.inference.grid import xyz_grid
    from lorakiln.models.configured import load_configured_model

    bundle = load_configured_model(args.model, vae=args.vae, allow_pickle=args.allow_pickle)
    out.mkdir(parents=True, exist_ok=True)
    for i, (grid, _cells) in enumerate(xyz_grid(bundle, params, x, y, z, lora_dir=args.lora_dir,
                                                embeddings_dir=args.embeddings_dir)):
        path = out / f"xyz_grid-{i:04d}.png"
        grid.save(path)
        print(path)
    return 0
