"""Per-step caption processing with kohya semantics (`BaseDataset.process_caption`).

Why these knobs exist: shuffling tags stops the LoRA from tying concepts to tag *position*;
`keep_tokens` pins the trigger word in front so it is always attended first; tag dropout
makes the LoRA robust to short prompts; whole-caption dropout trains the unconditional branch
used by classifier-free guidance.

All randomness comes from the caller's `random.Random`, so a step's captions are a pure
function of that generator's seed — identical after a resume.
"""

from __future__ import annotations

import random

#: kohya `caption_separator` default; tags are rejoined with ", " (kohya does the same).
TAG_SEPARATOR = ","


def split_tags(caption: str) -> list[str]:
    """Tags in order, stripped; empty tags (from ",," or a trailing ",") are dropped.

    kohya keeps empty tags, which only produces stray ", ," in prompts; dropping them is
    the one deliberate deviation.
    """
    return [tag.strip() for tag in caption.split(TAG_SEPARATOR) if tag.strip()]


def process_caption(caption: str, *, shuffle: bool = False, keep_tokens: int = 0,
                    caption_dropout_rate: float = 0.0, caption_tag_dropout_rate: float = 0.0,
                    drop_all: bool = False, rng: random.Random) -> str:
    """Return the caption to train on for one sample.

    Order of operations follows kohya:
    1. whole-caption dropout: "" when `drop_all` (kohya `caption_dropout_every_n_epochs`) or
       with probability `caption_dropout_rate` (a random draw only happens when the rate > 0,
       so enabling nothing consumes no randomness);
    2. if neither shuffling nor tag dropout is on, the caption is returned unchanged
       (`keep_tokens` alone does nothing, as in kohya);
    3. otherwise tags are split on ","; the first `keep_tokens` stay fixed in front, the rest
       are shuffled (if `shuffle`) and then each is dropped with `caption_tag_dropout_rate`;
    4. tags are rejoined with ", ".
    """
    if not 0.0 <= caption_dropout_rate <= 1.0 or not 0.0 <= caption_tag_dropout_rate <= 1.0:
        raise ValueError("dropout rates must be in [0, 1]")
    if drop_all:
        return ""
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    if not shuffle and caption_tag_dropout_rate <= 0:
        return caption
    tags = split_tags(caption)
    keep = max(0, keep_tokens)
    fixed, flex = tags[:keep], tags[keep:]
    if shuffle:
        rng.shuffle(flex)
    if caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= caption_tag_dropout_rate]
    return ", ".join(fixed + flex)
