"""Edit the caption files of a whole training folder: add, remove and replace tags or phrases.

Why: after auto-captioning (BLIP sentences, WD14 booru tags) every caption has to be reviewed.
Traits shared by *every* image ("black hair", "brown skin" for one person) should leave the
captions so the LoRA binds them to the trigger word, and what differs ("wearing sunglasses")
should be captioned explicitly. Doing that by hand in hundreds of files is how captions end up
inconsistent, so these operations run over every caption at once, as kohya_ss' "Batch edit".

Rules, chosen to be predictable rather than clever:

- The caption is the first non-blank line of `<image stem><ext>` (the line the trainer reads,
  `scan_common.read_caption`); other lines are kept byte for byte, as is the line ending.
- Matching is case-insensitive on word boundaries ("hair" never matches "chair"); runs of
  whitespace in a phrase match any whitespace.
- Every operation first builds an `EditPlan` (the changed files only) and writes nothing until
  `apply_plan`; writes are atomic (temporary file + `os.replace`), UTF-8 without a BOM, and a
  non-UTF-8 caption anywhere stops the whole edit before anything is written.
- Images are only listed, never opened or written.

See `remove_from_caption` for how a phrase leaves a sentence, and docs/captions.md.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakiln.atomic import atomic_path
from lorakiln.data.caption_target import ImageGuard, check_caption_extension
from lorakiln.data.captions import split_tags
from lorakiln.data.dataset import IMAGE_EXTENSIONS
from lorakiln.data.scan_common import raise_if_problems
from lorakiln.errors import ConfigError, DatasetError

Position = Literal["start", "end"]
#: One edit step: the caption (None = the image has no caption) → the new caption (None = none).
CaptionEdit = Callable[[str | None], str | None]

#: Words removed together with a phrase (see `remove_from_caption`).
ARTICLES: tuple[str, ...] = ("a", "an", "the")
JOINERS: tuple[str, ...] = ("and", "or")
INTRODUCERS: tuple[str, ...] = ("with", "wearing", "in", "holding")

_ARTICLE_BEFORE = re.compile(rf"(?<!\w)(?:{'|'.join(ARTICLES)})\s+$", re.IGNORECASE)
_JOINER_BEFORE = re.compile(rf"(?<!\w)(?:{'|'.join(JOINERS)})\s+$", re.IGNORECASE)
_INTRODUCER_BEFORE = re.compile(rf"(?<!\w)(?:{'|'.join(INTRODUCERS)})\s+$", re.IGNORECASE)
_JOINER_AFTER = re.compile(rf"\s+(?:{'|'.join(JOINERS)})(?=\s+\w)", re.IGNORECASE)
_STARTS_WITH_ARTICLE = re.compile(rf"(?:{'|'.join(ARTICLES)})\s", re.IGNORECASE)


# --------------------------------------------------------------------------- text operations


def _norm(text: str) -> str:
    """Comparison key for tags: case-insensitive, whitespace runs collapsed."""
    return " ".join(text.split()).casefold()


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive pattern for `phrase` on word boundaries.

    `(?<!\\w)`/`(?!\\w)` instead of `\\b` so phrases that start or end with punctuation
    ("(smile:1.2)", "1girl") still match only as whole words.
    """
    words = phrase.split()
    if not words:
        raise ConfigError("the phrase to match is empty; pass some text, e.g. --remove \"black hair\"")
    body = r"\s+".join(re.escape(word) for word in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def tidy_caption(caption: str) -> str:
    """Light clean-up after an edit: single spaces, no space before punctuation, no ", ,",
    no leading/trailing commas. Never reorders or rewords anything."""
    text = re.sub(r"\s+", " ", caption)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    return text.strip(" ,")


def add_to_caption(caption: str | None, text: str, position: Position = "end",
                   *, create_missing: bool = False) -> str | None:
    """Add the tags of `text` (split on commas) that the caption does not have yet.

    A tag counts as present when some comma-separated tag of the caption equals it (stripped,
    case-insensitive); present tags are skipped, not moved. At the end, a trailing comma or a
    single sentence-ending period of the caption gives way to the ", " separator. A missing
    caption (None) stays missing unless `create_missing`, then it becomes just the tags.
    """
    if position not in ("start", "end"):
        raise ConfigError(f"position {position!r} is not 'start' or 'end'")
    wanted = split_tags(text)
    if not wanted:
        raise ConfigError("the text to add is empty; pass a tag, e.g. --add anantn")
    if caption is None:
        return ", ".join(_unique(wanted)) if create_missing else None
    present = {_norm(tag) for tag in split_tags(caption)}
    missing = [tag for tag in _unique(wanted) if _norm(tag) not in present]
    if not missing:
        return caption
    added = ", ".join(missing)
    if position == "start":
        rest = caption.strip().strip(", ")
        return f"{added}, {rest}" if rest else added
    rest = caption.strip().rstrip(", ")
    if rest.endswith(".") and not rest.endswith(".."):
        rest = rest[:-1].rstrip(", ")
    return f"{rest}, {added}" if rest else added


def _unique(tags: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        if _norm(tag) not in seen:
            seen.add(_norm(tag))
            out.append(tag)
    return out


def remove_from_caption(caption: str, phrase: str) -> str:
    """Remove `phrase` from a tag list or a sentence; unchanged text is returned as is.

    The caption is split on commas. If some tag equals the phrase (case-insensitive), those
    tags are dropped whole and nothing else changes ("black hair ribbon" survives removing
    "black hair" from booru tags). Otherwise each word-boundary occurrence is cut out of the
    tags or sentences that contain it, together with:

    1. an article right before it ("a", "an", "the"), unless the phrase starts with one;
    2. then one connector: a following "and"/"or" ("X and Y" minus X → "Y"), otherwise a
       preceding "and"/"or" ("X and Y" minus Y → "X"), otherwise a preceding "with",
       "wearing", "in" or "holding" ("a man with a beard" minus beard → "a man").

    Tags are then rejoined with ", " and emptied tags dropped, so no ", ," or trailing comma
    is left. "photo of anantn, a man with black hair and brown skin" minus "black hair" is
    "photo of anantn, a man with brown skin"; minus "brown skin" as well, "photo of anantn, a man".
    A phrase with commas ("black hair, brown skin") removes each of its tags.
    """
    phrases = split_tags(phrase)
    if not phrases:
        raise ConfigError("the phrase to remove is empty; pass some text, e.g. --remove \"black hair\"")
    for one in phrases:
        caption = _remove_one(caption, one)
    return caption


def _remove_one(caption: str, phrase: str) -> str:
    pattern = phrase_pattern(phrase)
    key = _norm(phrase)
    segments = caption.split(",")
    if any(_norm(segment) == key for segment in segments):
        kept = [segment for segment in segments if _norm(segment) != key]  # whole tags only
    else:
        article = _STARTS_WITH_ARTICLE.match(phrase.strip()) is None
        kept = [_cut_phrase(segment, pattern, article=article) for segment in segments]
        if kept == segments:
            return caption
    return ", ".join(tidy for segment in kept if (tidy := tidy_caption(segment)))


def _cut_phrase(text: str, pattern: re.Pattern[str], *, article: bool) -> str:
    """Cut every match of `pattern` in one comma-free segment, with the words of rule 1-2."""
    spans: list[tuple[int, int]] = []
    floor = 0  # a cut never reaches back into the previous one
    for match in pattern.finditer(text):
        start, end = match.span()
        if start < floor:
            continue
        if article and (m := _ARTICLE_BEFORE.search(text, floor, start)):
            start = m.start()
        if m := _JOINER_AFTER.match(text, end):
            end = m.end()
        elif (m := _JOINER_BEFORE.search(text, floor, start)) or (m := _INTRODUCER_BEFORE.search(text, floor, start)):
            start = m.start()
        spans.append((start, end))
        floor = end
    if not spans:
        return text
    pieces, last = [], 0
    for start, end in spans:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return " ".join(pieces)


def replace_in_caption(caption: str, old: str, new: str, *, regex: bool = False) -> str:
    """Replace `old` by `new`: plain text on word boundaries (case-insensitive), or a regex.

    A regex is used as written (add `(?i)` to ignore case) and `new` may use `\\1` / `\\g<name>`;
    plain `new` is literal. A changed caption gets `tidy_caption`, so replacing with "" leaves
    no double spaces or ", ,".
    """
    pattern = compile_regex(old) if regex else phrase_pattern(old)
    result = pattern.sub(new, caption) if regex else pattern.sub(lambda _: new, caption)
    return caption if result == caption else tidy_caption(result)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a user regex, turning a syntax error into a `ConfigError` that shows where."""
    if not pattern:
        raise ConfigError("the regex to replace is empty; pass a pattern, e.g. --regex --replace \"\\s+\" \" \"")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"regex {pattern!r} is invalid: {exc}; fix it or drop --regex to match plain text") from exc


def add_edit(text: str, position: Position = "end", *, create_missing: bool = False) -> CaptionEdit:
    """An edit step for `add_to_caption` (arguments are checked now, not per file)."""
    add_to_caption("", text, position)
    return lambda caption: add_to_caption(caption, text, position, create_missing=create_missing)


def remove_edit(phrases: Sequence[str]) -> CaptionEdit:
    """An edit step removing each of `phrases` in order (see `remove_from_caption`)."""
    if not phrases:
        raise ConfigError("nothing to remove; pass at least one phrase")
    for phrase in phrases:
        remove_from_caption("", phrase)

    def edit(caption: str | None) -> str | None:
        if caption is None:
            return None
        for phrase in phrases:
            caption = remove_from_caption(caption, phrase)
        return caption

    return edit


def replace_edit(old: str, new: str, *, regex: bool = False) -> CaptionEdit:
    """An edit step for `replace_in_caption`."""
    if not regex and not old.split():
        raise ConfigError("the text to replace is empty; pass some text, e.g. --replace man woman")
    replace_in_caption("", old, new, regex=regex)
    return lambda caption: None if caption is None else replace_in_caption(caption, old, new, regex=regex)


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class CaptionFile:
    """One image and its caption file as read from disk.

    `text` is the whole decoded file (BOM removed), None when there is no file; `error` says
    why an existing file could not be read (not UTF-8, unreadable).
    """

    image: Path
    path: Path
    text: str | None
    error: str | None = None

    @property
    def caption(self) -> str | None:
        """The first non-blank line, stripped (what the trainer uses); None if missing or blank."""
        if self.text is None:
            return None
        for line in self.text.splitlines():
            if line.strip():
                return line.strip()
        return None

    def with_caption(self, caption: str) -> str:
        """The whole file with its caption line replaced; every other line is kept as is."""
        if self.text is None:
            return caption + "\n"
        lines = self.text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip():
                lines[i] = caption + line[len(line.splitlines()[0]):]  # keep its line ending
                return "".join(lines)
        return caption + self.text  # blank file: the caption goes in front of its blank lines


def resolve_folder(folder: str | os.PathLike[str]) -> Path:
    """The folder as an absolute path, or a `DatasetError` saying what is wrong with it."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise DatasetError(f"folder {str(path)!r} does not exist; check the path")
    if not path.is_dir():
        raise DatasetError(f"{str(path)!r} is a file, not a folder; pass the folder that holds the images")
    return path.resolve()


def find_images(root: Path, *, recursive: bool = True) -> list[Path]:
    """Images (by `IMAGE_EXTENSIONS`) in `root` and, if `recursive`, its subfolders, sorted.

    Hidden files and folders (".cache", macOS "._x.jpg") are skipped: they are never
    training images, and editing a caption for them would only create clutter. Symlinked
    folders are followed (the trainer's scanner follows them too), each real folder once.
    """
    found: list[Path] = []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = Path(dirpath).resolve()
        if real in visited:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [Path(dirpath, name) for name in filenames
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def read_caption_file(image: Path, ext: str) -> CaptionFile:
    """Read the caption of `image`; errors are recorded on the result, never raised."""
    path = image.with_suffix(ext)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return CaptionFile(image=image, path=path, text=None)
    except OSError as exc:
        return CaptionFile(image=image, path=path, text=None,
                           error=f"caption {str(path)!r} cannot be read ({exc.strerror or exc})")
    try:
        return CaptionFile(image=image, path=path, text=raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return CaptionFile(image=image, path=path, text=None,
                           error=f"caption {str(path)!r} is not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                 f"position {exc.start}); re-save it as UTF-8")


def collect_captions(folder: str | os.PathLike[str], *, caption_extension: str = ".txt",
                     recursive: bool = True) -> tuple[Path, list[CaptionFile]]:
    """(absolute root, one `CaptionFile` per image); a `DatasetError` if there are no images."""
    root = resolve_folder(folder)
    ext = check_caption_extension(caption_extension)
    images = find_images(root, recursive=recursive)
    if not images:
        where = "" if recursive else " (subfolders are not searched without recursion)"
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {str(root)!r}{where}; "
                           "pass the training folder or one of its `<repeats>_<token>` subfolders")
    return root, [read_caption_file(image, ext) for image in images]


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
