"""Arguments and runners for `lorakiln dataset edit` and `lorakiln dataset sheet`.

Kept out of `cli.py` so the CLI stays a dispatcher: it adds these arguments to its
sub-parsers and calls `run_edit` / `run_sheet`, which return the exit status and raise
`LorakilnError` for anything the user can fix. Library imports happen inside the runners so
`lorakiln --help` does not import Pillow.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """`dataset edit DIR [--add TEXT [--at start|end] [--create-missing]] [--remove TEXT ...]
    [--replace OLD NEW [--regex]] [--caption-extension .txt] [--dry-run] [--no-recursive]`."""
    # Optional for argparse only: `--remove "side view" train` puts the folder after the
    # phrases, where `--remove`'s nargs="+" takes it; `run_edit` takes it back (`_folder_and_phrases`).
    parser.add_argument("dir", nargs="?", metavar="DIR", help="training folder (its `<repeats>_<token>` "
                        "subfolders are included) or one concept folder; before or after the options")
    parser.add_argument("--add", action="append", metavar="TEXT",
                        help="add this tag (or comma-separated tags) where a caption lacks it (repeatable)")
    parser.add_argument("--at", choices=["start", "end"], default=None,
                        help="where --add puts the tag (default: end)")
    parser.add_argument("--create-missing", action="store_true",
                        help="with --add: write a caption file holding just the tag for images that have none")
    parser.add_argument("--remove", action="extend", nargs="+", metavar="TEXT",
                        help='remove these tags or phrases, e.g. --remove "black hair" "brown skin"')
    parser.add_argument("--replace", nargs=2, metavar=("OLD", "NEW"),
                        help="replace OLD by NEW (whole words, any case; NEW may be \"\")")
    parser.add_argument("--regex", action="store_true",
                        help="with --replace: OLD is a Python regex and NEW may use \\1")
    parser.add_argument("--caption-extension", default=".txt",
                        help="extension of the caption files (default: .txt)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change (- old / + new per file) and write nothing")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false",
                        help="only the images directly in DIR, not its subfolders")


def run_edit(args: argparse.Namespace) -> int:
    """Remove, then replace, then add (so an added tag is never removed again); print the result."""
    from lorakiln.data.caption_edit import edit_captions
    from lorakiln.data.caption_rules import add_edit, remove_edit, replace_edit
    from lorakiln.errors import ConfigError

    args.dir, args.remove = _folder_and_phrases(args.dir, args.remove)
    if not (args.add or args.remove or args.replace):
        raise ConfigError("nothing to do: pass --add TEXT, --remove TEXT or --replace OLD NEW")
    if not args.add and (args.at or args.create_missing):
        raise ConfigError("--at and --create-missing only apply to --add; pass --add TEXT too")
    if args.regex and not args.replace:
        raise ConfigError("--regex only applies to --replace; pass --replace OLD NEW too")
    edits = []
    if args.remove:
        edits.append(remove_edit(args.remove))
    if args.replace:
        edits.append(replace_edit(args.replace[0], args.replace[1], regex=args.regex))
    if args.add:
        edits.append(add_edit(", ".join(args.add), args.at or "end", create_missing=args.create_missing))
    plan = edit_captions(args.dir, edits, caption_extension=args.caption_extension, recursive=args.recursive,
                         dry_run=args.dry_run)
    if args.dry_run and plan.changes:
        print(plan.format_diff())
    print(plan.summary())
    return 0


def _folder_and_phrases(folder: str | None, phrases: list[str] | None) -> tuple[str, list[str] | None]:
    """The folder and the `--remove` phrases, whichever order they were typed in.

    `dataset edit train --remove "black hair" "brown skin"` and `dataset edit --remove "side view"
    train` both work: with the folder typed last, `--remove` (one or more phrases) swallows it,
    so the last phrase is the folder when no folder came on its own — and only if it is one.
    """
    from lorakiln.errors import ConfigError

    if folder is not None:
        return folder, phrases
    if phrases and len(phrases) > 1 and Path(phrases[-1]).expanduser().is_dir():
        return phrases[-1], phrases[:-1]
    last = f"; the last --remove value {phrases[-1]!r} is not a folder" if phrases else ""
    raise ConfigError(f"no folder given: pass it first, `lorakiln dataset edit DIR --remove TEXT ...`{last}")


def add_sheet_arguments(parser: argparse.ArgumentParser) -> None:
    """`dataset sheet DIR [-o sheet.png] [--columns N] [--thumb 256] [--caption-extension .txt]`."""
    parser.add_argument("dir", help="training folder (subfolders included) or one concept folder")
    parser.add_argument("-o", "--output", default="sheet.png",
                        help="sheet file; several pages become sheet-001.png, ... (default: sheet.png, "
                        "must be outside DIR)")
    parser.add_argument("--columns", type=int, default=6, help="thumbnails per row (default: 6)")
    parser.add_argument("--thumb", type=int, default=256, help="thumbnail size in px (default: 256)")
    parser.add_argument("--per-page", type=int, default=48, help="images per page (default: 48)")
    parser.add_argument("--caption-extension", default=".txt",
                        help="extension of the caption files (default: .txt)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false",
                        help="only the images directly in DIR, not its subfolders")


def run_sheet(args: argparse.Namespace) -> int:
    """Write the sheet page(s) and print their paths."""
    from lorakiln.data.contact_sheet import write_contact_sheet

    paths = write_contact_sheet(args.dir, args.output, columns=args.columns, thumb=args.thumb,
                                caption_extension=args.caption_extension, max_per_page=args.per_page,
                                recursive=args.recursive)
    for path in paths:
        print(f"contact sheet written: {path}")
    return 0
