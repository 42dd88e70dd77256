"""`lorakiln caption DIR`: the argparse front end of `caption_with_blip` and `tag_images`.

Kept free of heavy imports (torch, transformers, onnxruntime load inside `run`) so that
`lorakiln --help` stays instant. Flags that belong to the other method are refused rather than
silently ignored: `--num-beams 10 --method tagger` is a mistake worth a message.
"""

from __future__ import annotations

import argparse

from lorakiln.errors import ConfigError

#: Flags (argparse dests) that only one method understands; they default to None to detect use.
BLIP_ONLY = {"num_beams": "--num-beams", "min_length": "--min-length", "max_length": "--max-length",
             "sample": "--sample", "top_p": "--top-p", "seed": "--seed", "text_prompt": "--text-prompt"}
TAGGER_ONLY = {"threshold": "--threshold", "character_threshold": "--character-threshold",
               "exclude_tags": "--exclude-tags", "no_underscore_replace": "--no-underscore-replace",
               "include_rating": "--include-rating", "sort_by_confidence": "--sort-by-confidence",
               "tag_separator": "--tag-separator"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `caption` arguments to `parser` (the CLI's subparser, or a test's parser)."""
    parser.add_argument("dir", metavar="DIR", help="folder of training images (searched recursively, so the "
                        "training root with its 10_token folders works)")
    parser.add_argument("--method", choices=("blip", "tagger"), default="blip",
                        help="blip: one sentence per image (default); tagger: WD14 booru-style tags")
    parser.add_argument("--model", default=None, metavar="ID_OR_PATH",
                        help="local model folder or Hugging Face repo id (default: "
                        "Salesforce/blip-image-captioning-large, or SmilingWolf/wd-v1-4-convnextv2-tagger-v2)")
    parser.add_argument("--prefix", default="", help='text before every caption, e.g. "photo of anantn, "')
    parser.add_argument("--postfix", default="", help="text after every caption")
    parser.add_argument("--caption-extension", default=None, metavar="EXT",
                        help="caption file suffix, next to each image (default .txt)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace existing captions (default: keep them)")
    parser.add_argument("--metadata", action="store_true",
                        help="write DIR/metadata.jsonl (ImageFolder: file_name + caption column) instead of files")
    parser.add_argument("--caption-column", default=None, help="caption column of metadata.jsonl (default prompt)")
    parser.add_argument("--no-recursive", action="store_true", help="only images directly in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    blip = parser.add_argument_group("BLIP (--method blip; defaults are the kohya_ss GUI's)")
    blip.add_argument("--num-beams", type=int, default=None, help="beam search width (default 1)")
    blip.add_argument("--min-length", type=int, default=None,
                      help="minimum caption length in tokens, counting BLIP's 4 prompt tokens (default 5)")
    blip.add_argument("--max-length", type=int, default=None, help="maximum length in tokens (default 75)")
    blip.add_argument("--sample", action="store_true", default=None,
                      help="nucleus sampling instead of beam search (varied, less literal captions)")
    blip.add_argument("--top-p", type=float, default=None, help="nucleus sampling top-p (default 0.9)")
    blip.add_argument("--seed", type=int, default=None, help="seed for --sample, for repeatable captions")
    blip.add_argument("--text-prompt", default=None,
                      help='text BLIP continues and that is cut from the caption (default "a picture of"; '
                      '"" for none)')

    tagger = parser.add_argument_group("WD14 tagger (--method tagger)")
    tagger.add_argument("--threshold", type=float, default=None, help="general tag threshold (default 0.35)")
    tagger.add_argument("--character-threshold", type=float, default=None,
                        help="character tag threshold (default 0.85)")
    tagger.add_argument("--exclude-tags", default=None, metavar="TAGS",
                        help='comma-separated tags never written, e.g. "1girl, solo"')
    tagger.add_argument("--no-underscore-replace", action="store_true", default=None,
                        help="keep long_hair as is (default: long hair; kaomoji like ^_^ are always kept)")
    tagger.add_argument("--include-rating", action="store_true", default=None,
                        help="put the rating tag (general, sensitive, ...) first")
    tagger.add_argument("--sort-by-confidence", action="store_true", default=None,
                        help="most confident tags first (default: the model's order, characters last)")
    tagger.add_argument("--tag-separator", default=None, help='between tags (default ", ")')


def run(args: argparse.Namespace) -> int:
    """Caption `args.dir`; print the summary; 0 when every image was captioned or kept, else 1."""
    from lorakiln.captioning.files import DEFAULT_CAPTION_EXTENSION, OutputOptions
    from lorakiln.data.imagefolder import DEFAULT_CAPTION_COLUMN

    _refuse_other_method(args)
    if args.metadata and args.caption_extension is not None:
        raise ConfigError("--caption-extension does not apply with --metadata (captions go to metadata.jsonl); "
                          "drop one of them")
    if not args.metadata and args.caption_column is not None:
        raise ConfigError("--caption-column applies to --metadata only; add --metadata or drop it")
    output = OutputOptions(caption_extension=args.caption_extension or DEFAULT_CAPTION_EXTENSION,
                           overwrite=args.overwrite, output="metadata" if args.metadata else "files",
                           caption_column=args.caption_column or DEFAULT_CAPTION_COLUMN,
                           recursive=not args.no_recursive, progress=not args.no_progress)
    if args.method == "blip":
        from lorakiln.captioning.blip import DEFAULT_BLIP_MODEL, BlipOptions, caption_with_blip

        blip = _given(args, BLIP_ONLY)
        if "sample" in blip:
            blip["sample"] = bool(blip["sample"])
        options = BlipOptions(**_common(args, DEFAULT_BLIP_MODEL), **blip)
        summary = caption_with_blip(args.dir, options, output, log=print)
    else:
        from lorakiln.captioning.tagger import DEFAULT_TAGGER_MODEL, TaggerOptions, parse_tag_list, tag_images

        given = _given(args, TAGGER_ONLY)
        renamed = {"threshold": "general_threshold"}
        tagger = {renamed.get(k, k): v for k, v in given.items()
                  if k not in ("exclude_tags", "no_underscore_replace")}
        if "exclude_tags" in given:
            tagger["exclude_tags"] = parse_tag_list(given["exclude_tags"])
        if given.get("no_underscore_replace"):
            tagger["replace_underscores"] = False
        options_t = TaggerOptions(**_common(args, DEFAULT_TAGGER_MODEL), **tagger)
        summary = tag_images(args.dir, options_t, output, log=print)
    print(summary.format())
    return 0 if summary.ok else 1


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    return {dest: getattr(args, dest) for dest in flags if getattr(args, dest, None) is not None}


def _common(args: argparse.Namespace, default_model: str) -> dict[str, object]:
    return {"model": args.model or default_model, "prefix": args.prefix, "postfix": args.postfix,
            "batch_size": args.batch_size, "device": args.device}


def _refuse_other_method(args: argparse.Namespace) -> None:
    other = TAGGER_ONLY if args.method == "blip" else BLIP_ONLY
    used = [flag for dest, flag in other.items() if getattr(args, dest, None) is not None]
    if used:
        method = "tagger" if args.method == "blip" else "blip"
        raise ConfigError(f"{', '.join(used)} only apply to --method {method}, but --method is {args.method}; "
                          f"add --method {method} or drop {'them' if len(used) > 1 else 'it'}")
