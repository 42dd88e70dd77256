"""Dataset findings beyond "can it be read": quality, captions and the trigger word.

The scanners (`kohya.py`, `imagefolder.py`) already stop on anything that would break training
and collect soft issues. This module adds what the kohya_ss + AUTOMATIC1111 LoRA walkthrough asks a person to look at by eye, so the
trainer and `lorakiln dataset check` can say it before a single step:

* images below the training resolution (upscaled into their bucket; far below it, an error),
  blurry (motion blur included), near-duplicates, grayscale without a caption that says so,
  transparent, animated;
* captions that do not contain their folder's trigger word, the most frequent words and tags,
  and traits present in *every* caption ("characteristics that are the same in every photo (in
  my case, 'black hair' and 'brown skin') should not be in the caption", the kohya_ss walkthrough);
* the trigger word itself, against the real CLIP vocabulary (`token_check.py`).

Findings are plain records; the caller decides how to print them (log lines in the trainer,
text or JSON in the CLI). A finding about files lists every one of them in `paths`; fix-it
commands in messages are shell-quoted, so a folder named `10_anantn person` can be pasted.

Trigger words are never advised out of the captions: the folder tokens, an explicit `--token`,
pivotal tuning's `token_abstraction` (comma-separated, one per concept; the diffusers advanced
recipe keeps them in every caption) and the words of an ImageFolder's `instance_prompt` are left
out of the "in every caption" analysis.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorakiln.data.captions import split_tags
from lorakiln.data.dataset import Dataset
from lorakiln.data.files import read_caption
from lorakiln.data.image_modes import BACKGROUND_NAME, describe_mode
from lorakiln.data.quality import (
    BLUR_THRESHOLD,
    CRISP_WIDTH,
    DUPLICATE_DISTANCE,
    ImageStats,
    duplicate_groups,
    measure_images,
)
from lorakiln.data.scan_common import shell_quote

Severity = Literal["error", "warning", "info"]

#: Words too common in captions to say anything about the subject.
STOPWORDS = frozenset(
    ["a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "for", "by", "from", "is", "are", "was", "be", "it", "its", "this", "that", "his", "her", "their", "there", "photo", "picture", "image"])
#: An image that would be upscaled more than this many times per side to reach the training
#: resolution (fewer than 1/16 of its pixels, e.g. under 128x128 at 512x512) is an error: the
#: upscaled pixels carry no detail, and the LoRA learns the blur. Fewer pixels than the
#: resolution, but not that few, is a warning.
TOO_SMALL_FACTOR = 4
#: Caption words that already say an image is black and white (no grayscale hint then).
_GRAY_WORDS = re.compile(r"(?<![^\W_])(?:black[\s_-]*(?:and|&)[\s_-]*white|b\s*&\s*w|b/w|monochrom\w*|"
                         r"gr[ae]y[\s_-]?scale)(?![^\W_])", re.IGNORECASE)
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class Finding:
    """One thing to fix or know: a code a program can match, a message a person can act on."""

    severity: Severity
    code: str
    message: str
    paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LintResult:
    """Findings plus the caption statistics `dataset check` prints."""

    findings: list[Finding] = field(default_factory=list)
    top_words: list[tuple[str, int]] = field(default_factory=list)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    num_captions: int = 0
    stats: list[ImageStats] = field(default_factory=list)


@dataclass(frozen=True)
class LintOptions:
    """Thresholds; the defaults suit photos of a subject (see `quality.py` for their source)."""

    resolution: tuple[int, int] = (512, 512)
    check_images: bool = True
    blur_threshold: float = BLUR_THRESHOLD
    duplicate_distance: int = DUPLICATE_DISTANCE
    check_tokens: bool = True  # off with pivotal tuning: new tokens replace the vocabulary entry
    top: int = 15


def _listed(paths: Iterable[Path | str]) -> tuple[str, ...]:
    """Every path, as text: `--json` readers act on all of them, not a sample."""
    return tuple(str(p) for p in paths)


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(Path(p).name for p in paths[:limit])
    return shown + (f", … (+{len(paths) - limit})" if len(paths) > limit else "")


def says_grayscale(caption: str | None) -> bool:
    """The caption already names the look ("black and white", "monochrome", "greyscale", "b&w")."""
    return bool(caption) and _GRAY_WORDS.search(caption or "") is not None


def _size_findings(stats: Sequence[ImageStats], resolution: tuple[int, int]) -> list[Finding]:
    width, height = resolution
    area = width * height
    good = [s for s in stats if s.error is None]
    tiny = [s for s in good if s.width * s.height * TOO_SMALL_FACTOR**2 < area]
    small = [s for s in good if s not in tiny and s.width * s.height < area]
    out = []
    if tiny:
        sizes = ", ".join(f"{Path(s.path).name} {s.width}x{s.height}" for s in tiny[:5])
        out.append(Finding("error", "too-small",
                           f"{len(tiny)} image(s) are far below the training resolution {width}x{height}: they "
                           f"would be upscaled more than {TOO_SMALL_FACTOR}x per side ({sizes}), and the LoRA "
                           "learns the blur; use larger originals or leave them out",
                           _listed(s.path for s in tiny)))
    if small:
        sizes = ", ".join(f"{Path(s.path).name} {s.width}x{s.height}" for s in small[:5])
        out.append(Finding("warning", "low-resolution",
                           f"{len(small)} image(s) have fewer pixels than the training resolution {width}x{height} "
                           f"and are upscaled into their bucket, which looks soft ({sizes}); use larger "
                           "originals, upscale them well beforehand, or leave them out (kohya_ss community advice)",
                           _listed(s.path for s in small)))
    return out


def _blur_finding(stats: Sequence[ImageStats], threshold: float) -> list[Finding]:
    blurry = sorted((s for s in stats if s.error is None and s.sharpness < threshold), key=lambda s: s.sharpness)
    if not blurry:
        return []

    def why(s: ImageStats) -> str:
        if not s.edge_width:
            return f"{Path(s.path).name} (no edges)"
        motion = f", motion blur {s.motion_direction}" if s.motion_direction else ""
        return f"{Path(s.path).name} {s.sharpness:.2f} ({s.edge_width:.1f} px{motion})"

    values = ", ".join(why(s) for s in blurry[:5])
    return [Finding("warning", "blurry",
                    f"{len(blurry)} image(s) look blurry: sharpness below {threshold:g}, i.e. edges wider than "
                    f"{CRISP_WIDTH / threshold:.1f} px in some direction (a crisp edge is {CRISP_WIDTH:g} px, "
                    f"1.0): {values}; kohya_ss community advice: 'if a photo is blurry … err on the side of "
                    "not including it'", _listed(s.path for s in blurry))]


def image_findings(stats: Sequence[ImageStats], options: LintOptions,
                   captions: Mapping[Path, str] | None = None) -> list[Finding]:
    """Resolution, sharpness, duplicates, grayscale, animation and alpha findings from measurements.

    `captions` (image path → caption) silences the grayscale hint for images whose caption
    already says "black and white" or the like.
    """
    out = _size_findings(stats, options.resolution) + _blur_finding(stats, options.blur_threshold)
    for group in duplicate_groups(stats, options.duplicate_distance):
        out.append(Finding("warning", "near-duplicate",
                           f"{len(group)} images are the same or nearly the same photo ({_names(group)}); keep one, "
                           "or the LoRA over-learns that pose", _listed(group)))
    captions = captions or {}
    gray = [s.path for s in stats if s.error is None and s.grayscale and not says_grayscale(captions.get(s.path))]
    if gray:
        out.append(Finding("warning", "grayscale",
                           f"{len(gray)} image(s) are grayscale and their captions do not say so ({_names(gray)}); "
                           "caption them 'black and white' or 'monochrome', or the LoRA learns the look as part "
                           "of the subject", _listed(gray)))
    animated = [s for s in stats if s.error is None and s.frames > 1]
    if animated:
        shown = ", ".join(f"{Path(s.path).name} {s.frames} frames" for s in animated[:5])
        out.append(Finding("warning", "animated",
                           f"{len(animated)} image(s) are animated ({shown}); only the first frame is trained. "
                           "Export the frame you want as PNG, or several frames as separate images",
                           _listed(s.path for s in animated)))
    out += mode_findings(stats)
    alpha = [s.path for s in stats if s.error is None and s.has_alpha]
    if alpha:
        out.append(Finding("info", "transparency",
                           f"{len(alpha)} image(s) have transparent pixels ({_names(alpha)}); they are trained "
                           f"composited on a {BACKGROUND_NAME} background", _listed(alpha)))
    return out


def mode_findings(stats: Sequence[ImageStats]) -> list[Finding]:
    """One note per Pillow mode that is not plain 8-bit RGB(A): what the loader turns it into.

    A user who exported 16-bit PNGs or CMYK JPEGs should see that they were converted, and how,
    rather than discover it in the samples.
    """
    by_mode: dict[str, list[Path]] = {}
    for s in stats:
        if s.error is None and describe_mode(s.mode):
            by_mode.setdefault(s.mode, []).append(s.path)
    return [Finding("info", "image-mode", f"{len(paths)} image(s) are {describe_mode(mode)} ({_names(paths)})",
                    _listed(paths)) for mode, paths in sorted(by_mode.items())]


def _has_word(caption: str, word: str) -> bool:
    """Whole-word, case-insensitive: CLIP lower-cases, and `zwx` must not match `zwxy`."""
    return re.search(rf"(?<![^\W_]){re.escape(word.lower())}(?![^\W_])", caption.lower()) is not None


def split_triggers(token: str | None) -> list[str]:
    """`token` as a list of trigger words: pivotal tuning's `token_abstraction` may name several
    concepts, comma-separated ("TOK,SKS")."""
    return [t.strip() for t in (token or "").split(",") if t.strip()]


def _trigger_words(dataset: Dataset, triggers: Sequence[str]) -> set[str]:
    """Every word that names the concept rather than describes an image: never advised out."""
    words = {t.lower() for t in triggers}
    for subset in dataset.subsets:
        words |= {w.lower() for w in _WORD_RE.findall(subset.token)} - STOPWORDS  # folder token, instance_prompt
        if subset.class_token:
            words |= {w.lower() for w in _WORD_RE.findall(subset.class_token)}
    return words


def caption_findings(dataset: Dataset, options: LintOptions, token: str | None = None) -> LintResult:
    """Trigger word presence, word/tag frequencies, traits in every caption, token quality."""
    from lorakiln.data.token_check import check_token

    result = LintResult()
    out = result.findings
    captions: list[str] = []
    tokens_seen: dict[str, list[str]] = {}
    explicit = split_triggers(token)
    for subset in dataset.subsets:
        # A folder token is one word; an ImageFolder's "token" is its instance_prompt sentence.
        triggers = explicit or ([subset.token] if len(subset.token.split()) == 1 else [])
        for trigger in triggers:
            tokens_seen.setdefault(trigger, []).append(subset.name)
        missing = [item.path for item in subset.items
                   if triggers and not any(_has_word(item.caption, t) for t in triggers)]
        if missing:
            named = " or ".join(repr(t) for t in triggers)
            out.append(Finding("warning", "caption-without-token",
                               f"{len(missing)} caption(s) in {subset.name!r} do not contain the trigger word "
                               f"{named} ({_names(missing)}); the LoRA ties the subject to the words it sees, so "
                               f"prefix them, e.g. `lorakiln dataset edit {shell_quote(subset.path)} --add "
                               f"{shell_quote('photo of ' + triggers[0])} --at start`",
                               _listed(missing)))
        captions += [item.caption for item in subset.items]
    result.num_captions = len(captions)
    if not captions:
        return result

    skip = _trigger_words(dataset, [*explicit, *tokens_seen])
    words: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for caption in captions:
        tag_list = [t.lower() for t in split_tags(caption)]
        tags.update(set(tag_list))
        plain = [t for t in tag_list if not any(_has_word(t, k) for k in skip if k)]
        tokens = [w for t in plain for w in _WORD_RE.findall(t)]
        words.update({w for w in tokens if w not in STOPWORDS and w not in skip})
        for t in plain:
            ws = _WORD_RE.findall(t)
            pairs.update({f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)
                          if a not in STOPWORDS and b not in STOPWORDS})
    result.top_words = words.most_common(options.top)
    result.top_tags = tags.most_common(options.top)
    n = len(captions)
    if n >= 3:
        everywhere = sorted({t for t, c in tags.items() if c == n and not any(_has_word(t, k) for k in skip if k)}
                            | {p for p, c in pairs.items() if c == n})
        if everywhere:
            shown = ", ".join(repr(t) for t in everywhere[:8])
            out.append(Finding("warning", "trait-in-every-caption",
                               f"{shown} appear(s) in every caption; kohya_ss community advice: characteristics that "
                               "are the same in every photo should not be captioned, so the trigger word absorbs "
                               f"them (remove with `lorakiln dataset edit {shell_quote(dataset.root)} --remove "
                               f"{shell_quote(everywhere[0])}`)"))
    if options.check_tokens:
        for trigger, folders in tokens_seen.items():
            try:
                report = check_token(trigger)
            except ValueError:
                continue
            if not report.ok:
                alternatives = f" Rarer alternatives: {', '.join(report.suggestions)}." if report.suggestions else ""
                out.append(Finding("warning", "common-token", f"{report.message}{alternatives} (folders: "
                                   f"{', '.join(folders)})"))
    return result


def lint_dataset(dataset: Dataset, options: LintOptions, token: str | None = None,
                 max_workers: int | None = None, images: Sequence[Path] | None = None) -> LintResult:
    """Everything above for a scanned dataset (image measurements only if `check_images`).

    `images` measures other files than the dataset's (`dataset check` adds those a failed scan
    left out); their captions are read beside them for the grayscale hint.
    """
    result = caption_findings(dataset, options, token)
    if options.check_images:
        paths = list(images) if images is not None else [item.path for item in dataset.items]
        captions = {item.path: item.caption for item in dataset.items}
        if dataset.caption_extension.startswith("."):
            for path in paths:
                if path not in captions:
                    captions[path] = read_caption(path, dataset.caption_extension).text or ""
        result.stats = measure_images(paths, max_workers)
        result.findings = image_findings(result.stats, options, captions) + result.findings
    return result
