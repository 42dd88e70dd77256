"""Caption text rules: add, remove and replace tags or phrases in one caption string.

Why apart from the folder walking (`caption_edit`): these are pure string functions, so the
rules can be read and tested without files, and the CLI checks a user's arguments (an empty
phrase, a bad regex) before any folder is touched.

- Matching is case-insensitive on word boundaries ("hair" never matches "chair"); runs of
  whitespace in a phrase match any whitespace.
- Tags are comma-separated; a tag already present is not added twice, nor moved.

See `remove_from_caption` for how a phrase leaves a sentence, and docs/captions.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from lorakiln.data.captions import split_tags
from lorakiln.errors import ConfigError

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
