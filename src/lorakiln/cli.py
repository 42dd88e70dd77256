"""The `lorakiln` command: verbs and dispatch only, no logic; heavy imports stay lazy so
`lorakiln --help` is instant (no torch/diffusers import before a verb runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorakiln import __version__
from lorakiln.errors import LorakilnError


def _cmd_presets(args: argparse.Namespace) -> int:
    from lorakiln.config.presets import PRESET_DESCRIPTIONS

    for name, text in PRESET_DESCRIPTIONS.items():
        print(f"{name:18} {text}")
    return 0


def _cmd_config_doc(args: argparse.Namespace) -> int:
    from lorakiln.config.docs import render_markdown

    text = render_markdown()
    if args.output:
        from lorakiln.atomic import write_text_atomic
        from lorakiln.io_guard import check_output

        write_text_atomic(check_output(args.output, [], verb="config doc --output", force=True), text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from lorakiln.config.load import dump_config, load_config

    sys.stdout.write(dump_config(load_config(args.config, list(args.set or []))))
    return 0


def _cmd_config_accelerate(args: argparse.Namespace) -> int:
    from lorakiln.training import accelerate_config as ac

    processes = args.num_processes
    if processes is None:
        import torch

        processes = max(1, torch.cuda.device_count())
    layout = ac.Layout(processes, args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port,
                       fsdp=args.fsdp)
    out = ac.write(layout, Path(args.output), force=args.force)
    total = processes * args.num_machines
    how = ", full fine-tunes sharded (FSDP)" if args.fsdp else ""
    print(f"wrote {out}: {args.num_machines} machine(s) x {processes} process(es) = {total}{how}\n"
          f"  run: accelerate launch --config_file {out} -m lorakiln train run.toml")
    return 0


def _cmd_config_import(args: argparse.Namespace) -> int:
    from lorakiln.config.importers import import_config, read_source, source_file

    text, name = read_source(args.source)
    out = None
    if args.output:  # the source (a path or command text) is never written over, even with --force
        from lorakiln.io_guard import check_output

        out = check_output(args.output, [] if args.source == "-" else [args.source], verb="config import",
                           force=args.force)
    result = import_config(text, source_name=name, fmt=args.format,
                           base_dir=out.resolve().parent if out else Path.cwd(), source_path=source_file(args.source))
    if out is None:
        sys.stdout.write(result.text)
    else:
        from lorakiln.atomic import write_text_atomic

        write_text_atomic(out, result.text)
        d = result.draft
        print(f"wrote {out} ({result.fmt}): {sum(map(len, d.values.values()))} keys set, "
              f"{len(d.unmapped)} options not imported, {len(d.notes)} notes (all listed at the top of the file)")
        for entry in d.unmapped:
            print(f"  not imported: {entry.option}: {entry.reason}")
    for warning in result.draft.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.problem:
        print(f"warning: the imported config does not validate yet; complete it:\n{result.problem}",
              file=sys.stderr)
        return 1
    return 0


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `generate` and `grid` (A1111's txt2img fields)."""
    p.add_argument("--model", required=True, help="base model: folder, .safetensors, hub id, tiny:sd1, …")
    p.add_argument("--vae", help="VAE override")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled .ckpt base models")
    p.add_argument("--params", help="an A1111 parameters block: text, a .txt file, a PNG with "
                   "infotext, or - for stdin; flags below override its values")
    p.add_argument("--prompt", help="prompt, with <lora:name:strength> and (word:1.2) syntax")
    p.add_argument("--negative-prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--sampler", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M Karras"')
    p.add_argument("--schedule-type", help="A1111 schedule type (Karras, Exponential, …)")
    p.add_argument("--cfg-scale", type=float)
    p.add_argument("--seed", type=int, help="-1 for random")
    p.add_argument("--size", help="WxH, e.g. 512x512")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--batch-count", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--lora-dir", help="folder searched for <lora:name:…> files (by stem)")
    p.add_argument("--embeddings-dir", help="folder of textual-inversion embeddings (used by stem)")
    p.add_argument("--output-dir", default="outputs/txt2img", help="where PNGs are written")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakiln", description="Train LoRAs for Stable Diffusion "
                                     "1.x and SDXL that load in AUTOMATIC1111, ComfyUI and diffusers.")
    parser.add_argument("--version", action="version", version=f"lorakiln {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("train", help="train a LoRA from a run TOML")
    p.add_argument("config", help="run TOML (see examples/quickstart/config.toml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.unet_lr=2e-4 (repeatable)")
    p.add_argument("--preset", help="apply a preset under the file's values (see `lorakiln presets`)")
    p.add_argument("--resume", nargs="?", const="", metavar="STATE",
                   help="continue exactly from a saved state folder; without STATE, this output's own "
                   "<output_name>-state (same as --set train.resume=STATE)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config and dataset and print the step arithmetic; load no model")
    p.add_argument("--events", metavar="FILE", help="also append the run's events (steps, loss, saves, "
                   "samples, end) to FILE as JSON lines, for the web UI or scripts (training/events.py)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="train on N local processes (one per GPU; on CPUs they share the cores): the "
                   "global batch is train_batch_size × N. For several machines use accelerate launch "
                   "(README: Many GPUs and machines)")
    p.add_argument("--verbose", action="store_true",
                   help="print each step's batch (its bucket and images); with several processes every "
                   "process prints, each line starting [process R], instead of process 0 alone")
    p.set_defaults(func=_lazy("lorakiln.training.command", "run"))

    p = sub.add_parser("generate", help="text-to-image with A1111 prompt syntax, LoRAs and embeddings")
    _add_generation_args(p)
    p.set_defaults(func=_lazy("lorakiln.inference.command", "generate_command"))

    p = sub.add_parser("grid", help="A1111 X/Y/Z plot, e.g. epochs × LoRA strengths")
    _add_generation_args(p)
    p.add_argument("--x", help='X axis, e.g. "Prompt S/R: last, last-000001, last-000002"')
    p.add_argument("--y", help='Y axis, e.g. "Prompt S/R: 1.0, 0.9, 0.8"')
    p.add_argument("--z", help="Z axis: one grid image per value")
    p.add_argument("--compare-epochs", metavar="OUTPUT_DIR", help="a training output folder: X = its "
                   "epoch files and the final LoRA, Y = strengths 1.0 … 0.5 (unless --y is given)")
    p.set_defaults(func=_lazy("lorakiln.inference.command", "grid_command"))

    p = sub.add_parser("presets", help="list the config presets")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_verb", required=True)
    c = csub.add_parser("doc", help="print the documentation of every config key (Markdown)")
    c.add_argument("--output", help="write to this file instead of stdout")
    c.set_defaults(func=_cmd_config_doc)
    c = csub.add_parser("show", help="print a config as resolved (preset, overrides, absolute paths)")
    c.add_argument("config")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=_cmd_config_show)
    c = csub.add_parser("import", help="turn a kohya_ss GUI config, an sd-scripts config/command or a "
                        "diffusers training command into a run TOML, listing what has no lorakiln equivalent")
    c.add_argument("source", help="a .json/.toml/.sh/.txt file, - for standard input, or the command text")
    c.add_argument("--output", "-o", help="write the run TOML here (default: print it)")
    c.add_argument("--format", default="auto", choices=["auto", "kohya-gui", "sd-scripts", "diffusers"],
                   help="source format (default: detected)")
    c.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    c.set_defaults(func=_cmd_config_import)
    c = csub.add_parser("accelerate", help="write an accelerate config for `accelerate launch --config_file FILE "
                        "-m lorakiln train run.toml`: processes per machine, machines, the main machine's address")
    c.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes on each machine, one per GPU (default: this machine's GPUs, at least 1)")
    c.add_argument("--num-machines", type=int, default=1, metavar="M")
    c.add_argument("--machine-rank", type=int, default=0, metavar="R", help="this machine's number, 0 on the main one")
    c.add_argument("--main-process-ip", metavar="ADDRESS", help="machine 0's address (with --num-machines > 1)")
    c.add_argument("--main-process-port", type=int, default=29500, metavar="PORT")
    c.add_argument("--fsdp", action="store_true", help="shard full fine-tunes (train.mode = 'full') over the "
                   "processes with FSDP, as train.fsdp = true does; LoRA runs stay data-parallel")
    c.add_argument("--output", "-o", default="accelerate.yaml", help="the file to write (default: accelerate.yaml)")
    c.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    c.set_defaults(func=_cmd_config_accelerate)
    _add_dataset_verbs(sub)
    from lorakiln.captioning import command as caption_cmd

    p = sub.add_parser("caption", help="write captions with BLIP (kohya's BLIP Captioning) or a WD14 tagger")
    caption_cmd.add_arguments(p)
    p.set_defaults(func=_lazy("lorakiln.captioning.command", "run"))
    from lorakiln.lora_tools import command as lora_cmd

    p = sub.add_parser("lora", help="inspect, convert, resize, extract and merge LoRA files (info, convert, resize, extract, merge, ziplora)")
    lora_cmd.add_arguments(p.add_subparsers(dest="lora_verb", required=True))
    p.set_defaults(func=_lazy("lorakiln.lora_tools.command", "run"))
    from lorakiln.toyworld import command as toy_cmd

    p = sub.add_parser("toy", help="the toy world: its datasets, the toy base model's pretraining, detectors")
    toy_cmd.add_arguments(p.add_subparsers(dest="toy_verb", required=True))
    p.set_defaults(func=_lazy("lorakiln.toyworld.command", "run"))
    from lorakiln.ui import server as ui_server

    p = sub.add_parser("ui", help="the web UI: dataset import and captions, the run form, training queue "
                       "(binds 127.0.0.1 unless --listen; never a public share link)")
    ui_server.add_arguments(p)
    p.set_defaults(func=_lazy("lorakiln.ui.server", "run"))
    return parser


def _lazy(module: str, function: str):  # type: ignore[no-untyped-def]
    """A handler that imports `module` only when its verb runs (keeps `--help` instant)."""
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return run


def _add_dataset_verbs(sub: argparse._SubParsersAction) -> None:
    """`dataset init|check|token|edit|sheet` (prep/command.py, prep/caption_command.py)."""
    from lorakiln.prep import caption_command as captions
    from lorakiln.prep import command as prep

    p = sub.add_parser("dataset", help="prepare and check training images")
    dsub = p.add_subparsers(dest="dataset_verb", required=True)
    d = dsub.add_parser("init", help="copy a folder of photos into a kohya `<repeats>_<token>` folder "
                        "(EXIF applied, formats normalised, unique names, repeats planned)")
    prep.add_init_arguments(d)
    d.set_defaults(func=_lazy("lorakiln.prep.command", "run_init"))
    d = dsub.add_parser("check", help="lint a training folder: unreadable, small, blurry, duplicate images, "
                        "captions, trigger word, buckets and the step arithmetic")
    prep.add_check_arguments(d)
    d.set_defaults(func=_lazy("lorakiln.prep.command", "run_check"))
    d = dsub.add_parser("token", help="is this trigger word in the SD CLIP vocabulary? (offline)")
    prep.add_token_arguments(d)
    d.set_defaults(func=_lazy("lorakiln.prep.command", "run_token"))
    d = dsub.add_parser("edit", help="add, remove or replace tags and phrases in every caption (--dry-run "
                        "shows the changes)")
    captions.add_edit_arguments(d)
    d.set_defaults(func=_lazy("lorakiln.prep.caption_command", "run_edit"))
    d = dsub.add_parser("sheet", help="a contact-sheet PNG of the images with their captions, for review")
    captions.add_sheet_arguments(d)
    d.set_defaults(func=_lazy("lorakiln.prep.caption_command", "run_sheet"))


#: Library loggers whose start-up notices do not apply to lorakiln: bitsandbytes tries a 4-bit CPU
#: GEMM kernel from the hub (lorakiln uses no 4-bit layers), and transformers tells CPU installs
#: to add torchvision for image processors lorakiln never calls (torchvision would pull a CUDA
#: torch; see the README's set-up). Real errors from both still print.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops", "transformers.utils.import_utils")


def quiet_library_notices() -> None:
    """Raise the named loggers to ERROR so a run's output starts with lorakiln's own lines."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    from lorakiln.models.lean_imports import hide_bitsandbytes

    hide_bitsandbytes()  # diffusers and peft would import it at start-up (seconds); 8-bit optimizers allow it
    quiet_library_notices()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LorakilnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a quota, a read-only or forbidden folder is the user's to fix, not a bug: one
        # line naming the file. Any other OSError keeps its traceback (a bug should be seen).
        from lorakiln.errors import OutputWriteError

        if err.errno not in OutputWriteError.ERRNOS:
            raise
        print(f"error: {OutputWriteError.from_os_error(err.filename, err, atomic=False)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
