"""Edit the caption files of a whole training folder: add, remove and replace tags or phrases.

Why: after auto-captioning (BLIP sentences, WD14 booru tags) every caption has to be reviewed.
Traits shared by *every* image ("black hair", "brown skin" for one person) should leave the
captions so the LoRA binds them to the trigger word, and what differs ("wearing sunglasses")
should be captioned explicitly. Doing that by hand in hundreds of files is how captions end up
inconsistent, so these operations run over every caption at once, as kohya_ss' "Batch edit".

Rules, chosen to be predictable rather than clever:

- The caption is the first non-blank line of `<image stem><ext>` (the line the trainer reads,
  `files.read_caption`); other lines are kept byte for byte, as is the line ending.
- The text rules (matching, tidying) live in `caption_rules`; this module walks the folder
  (`files.list_images`: hidden files skipped, symlinked folders followed) and writes.
- Every operation first builds an `EditPlan` (the changed files only) and writes nothing until
  `apply_plan`; writes are atomic (temporary file + `os.replace`), UTF-8 without a BOM, and a
  non-UTF-8 caption anywhere stops the whole edit before anything is written.
- Images are only listed, never opened or written.

See `caption_rules.remove_from_caption` for how a phrase leaves a sentence, and docs/captions.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorakiln.atomic import atomic_path
from lorakiln.data.caption_rules import CaptionEdit, Position, add_edit, remove_edit, replace_edit
from lorakiln.data.caption_target import ImageGuard, check_caption_extension
from lorakiln.data.dataset import IMAGE_EXTENSIONS
from lorakiln.data.files import CaptionFile, list_images, read_caption
from lorakiln.data.scan_common import raise_if_problems
from lorakiln.errors import DatasetError

# --------------------------------------------------------------------------- files


def resolve_folder(folder: str | os.PathLike[str]) -> Path:
    """The folder as an absolute path, or a `DatasetError` saying what is wrong with it."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise DatasetError(f"folder {str(path)!r} does not exist; check the path")
    if not path.is_dir():
        raise DatasetError(f"{str(path)!r} is a file, not a folder; pass the folder that holds the images")
    return path.resolve()


def collect_captions(folder: str | os.PathLike[str], *, caption_extension: str = ".txt",
                     recursive: bool = True) -> tuple[Path, list[CaptionFile]]:
    """(absolute root, one `CaptionFile` per image); a `DatasetError` if there are no images."""
    root = resolve_folder(folder)
    ext = check_caption_extension(caption_extension)
    images = list_images(root, recursive=recursive, follow_links=True)
    if not images:
        where = "" if recursive else " (subfolders are not searched without recursion)"
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {str(root)!r}{where}; "
                           "pass the training folder or one of its `<repeats>_<token>` subfolders")
    return root, [read_caption(image, ext) for image in images]


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class CaptionChange:
    """One caption file to write: its first line `old` → `new` (old None: the file is new).

    `content` is the whole new file: `new` plus every other line of the old file.
    """

    path: Path
    image: Path
    old: str | None
    new: str
    content: str


@dataclass(frozen=True)
class EditPlan:
    """What an edit changes, before (or after) it is written.

    `without_caption` lists images that have no caption once the plan is applied.
    """

    root: Path
    caption_extension: str
    changes: tuple[CaptionChange, ...]
    unchanged: int
    without_caption: tuple[Path, ...]
    dry_run: bool = True

    @property
    def created(self) -> list[CaptionChange]:
        return [c for c in self.changes if c.old is None]

    @property
    def emptied(self) -> list[CaptionChange]:
        """Changes that leave an empty caption: those images fall back to the folder caption."""
        return [c for c in self.changes if not c.new.strip()]

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def format_diff(self) -> str:
        """Per changed file: `--- file`, `- old`, `+ new` (a new file shows `- (no caption file)`)."""
        blocks = []
        for change in self.changes:
            old = "(no caption file)" if change.old is None else change.old
            blocks.append(f"--- {self._rel(change.path)}\n- {old}\n+ {change.new}")
        return "\n".join(blocks)

    def summary(self) -> str:
        """Counts for the user; says clearly whether anything was written."""
        verb = "would change" if self.dry_run else "changed"
        parts = [f"{len(self.changes)} caption file(s) {verb}"]
        if self.created:
            parts[0] += f" ({len(self.created)} new)"
        parts.append(f"{self.unchanged} unchanged")
        parts.append(f"{len(self.without_caption)} image(s) without a {self.caption_extension} caption")
        text = ", ".join(parts) + f" in {self.root}"
        if self.dry_run:
            text += "\ndry run: nothing was written"
        if self.emptied:
            text += (f"\nwarning: {len(self.emptied)} caption(s) end up empty (e.g. "
                     f"{self._rel(self.emptied[0].path)}); those images train with their folder caption")
        return text


def plan_edit(folder: str | os.PathLike[str], edits: Sequence[CaptionEdit], *, caption_extension: str = ".txt",
              recursive: bool = True) -> EditPlan:
    """Run `edits` in order over every caption under `folder`; write nothing.

    Images sharing a stem (a.jpg + a.png) share one caption file, which is edited once.
    Unreadable captions raise one `DatasetError` listing all of them.
    """
    root, files = collect_captions(folder, caption_extension=caption_extension, recursive=recursive)
    ext = check_caption_extension(caption_extension)
    raise_if_problems(root, [f.error for f in files if f.error], what="caption folder")
    changes: list[CaptionChange] = []
    without: list[Path] = []
    unchanged = 0
    seen: set[Path] = set()
    guard = ImageGuard(f.image for f in files)
    for file in files:
        if file.path in seen:
            continue
        seen.add(file.path)
        guard.refuse(file.path, verb="dataset edit")
        old = file.caption
        new = old
        for edit in edits:
            new = edit(new)
        if new is None:
            without.append(file.image)
        elif new == old:
            unchanged += 1
        else:
            shown_old = None if file.text is None else (old or "")  # "" = the file exists but is blank
            changes.append(CaptionChange(path=file.path, image=file.image, old=shown_old, new=new,
                                         content=file.with_caption(new)))
    return EditPlan(root=root, caption_extension=ext, changes=tuple(changes), unchanged=unchanged,
                    without_caption=tuple(without))


def apply_plan(plan: EditPlan) -> EditPlan:
    """Write every change atomically and return the plan marked as applied.

    The file mode is kept (a new caption takes its image's read/write bits) because the
    temporary file is created private (0600) and would otherwise lock out other users.
    """
    for change in plan.changes:
        with atomic_path(change.path) as tmp:
            tmp.write_bytes(change.content.encode("utf-8"))
            if change.path.exists():
                shutil.copymode(change.path, tmp)
            else:
                os.chmod(tmp, change.image.stat().st_mode & 0o666)
    return EditPlan(root=plan.root, caption_extension=plan.caption_extension, changes=plan.changes,
                    unchanged=plan.unchanged, without_caption=plan.without_caption, dry_run=False)


def edit_captions(folder: str | os.PathLike[str], edits: Sequence[CaptionEdit], *, caption_extension: str = ".txt",
                  recursive: bool = True, dry_run: bool = False) -> EditPlan:
    """`plan_edit` then, unless `dry_run`, `apply_plan`."""
    plan = plan_edit(folder, edits, caption_extension=caption_extension, recursive=recursive)
    return plan if dry_run else apply_plan(plan)


def add_tag(folder: str | os.PathLike[str], text: str, *, position: Position = "end", create_missing: bool = False,
            caption_extension: str = ".txt", recursive: bool = True, dry_run: bool = False) -> EditPlan:
    """Add `text` (one tag or comma-separated tags) to every caption; see `add_to_caption`."""
    return edit_captions(folder, [add_edit(text, position, create_missing=create_missing)],
                         caption_extension=caption_extension, recursive=recursive, dry_run=dry_run)


def remove_phrases(folder: str | os.PathLike[str], phrases: Sequence[str], *, caption_extension: str = ".txt",
                   recursive: bool = True, dry_run: bool = False) -> EditPlan:
    """Remove each phrase from every caption; see `remove_from_caption`."""
    return edit_captions(folder, [remove_edit(phrases)], caption_extension=caption_extension,
                         recursive=recursive, dry_run=dry_run)


def replace_text(folder: str | os.PathLike[str], old: str, new: str, *, regex: bool = False,
                 caption_extension: str = ".txt", recursive: bool = True, dry_run: bool = False) -> EditPlan:
    """Replace `old` by `new` in every caption; see `replace_in_caption`."""
    return edit_captions(folder, [replace_edit(old, new, regex=regex)], caption_extension=caption_extension,
                         recursive=recursive, dry_run=dry_run)
