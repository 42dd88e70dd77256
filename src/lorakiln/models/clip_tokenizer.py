"""The SD 1.x CLIP tokenizer, built offline from the merges list bundled with the package.

Why bundle it: a single-file checkpoint carries no tokenizer, and fetching
`openai/clip-vit-large-patch14` from the hub is exactly what an offline trainer cannot do.
CLIP's `vocab.json` is not extra data: it is fully determined by the BPE merges list (byte
symbols, the same with `</w>`, one token per merge, then the two specials), so only the
first 48,894 merges are shipped (gzip, ~200 KB; MIT licence in `configs/clip_tokenizer/`).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from typing import Any

#: Vocabulary size of the SD 1.x text encoder's token embedding (CLIP ViT-L/14).
CLIP_VOCAB_SIZE = 49408
#: Context length of the SD 1.x text encoder.
CLIP_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable-unicode table, the alphabet CLIP's BPE works over.

    Printable Latin-1 bytes map to themselves; the rest are shifted to code points 256+, so
    every byte has a visible, whitespace-free symbol. The dict order is CLIP's vocab order.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Derive CLIP's token → id table from its merges list (CLIP `SimpleTokenizer` order)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


@functools.cache
def bundled_clip_merges() -> tuple[tuple[str, str], ...]:
    """The 48,894 merges shipped in `configs/clip_tokenizer/merges.txt.gz`, parsed once."""
    ref = resources.files("lorakiln.models").joinpath("configs/clip_tokenizer/merges.txt.gz")
    text = gzip.decompress(ref.read_bytes()).decode("utf-8")
    lines = text.split("\n")[1:]  # line 0 is the `#version` header
    return tuple(tuple(line.split(" ")) for line in lines if line)  # type: ignore[misc]


def make_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], **kwargs: Any) -> Any:
    """A `transformers.CLIPTokenizer` from an in-memory vocab and merges (no files needed)."""
    from transformers import CLIPTokenizer

    kwargs.setdefault("model_max_length", CLIP_MAX_LENGTH)
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **kwargs)


def load_clip_tokenizer(pad_token: str = EOS_TOKEN) -> Any:
    """The CLIP ViT-L/14 BPE tokenizer (49,408 tokens, max length 77) with the given pad token.

    SD 1.x and SDXL's first tokenizer pad with `<|endoftext|>`; SDXL's `tokenizer_2` has the same
    vocabulary and merges but pads with "!" (id 0) — `ModelFamily.tokenizer_pad_tokens`.
    """
    merges = list(bundled_clip_merges())
    return make_clip_tokenizer(vocab_from_merges(merges), merges, pad_token=pad_token)


def load_sd1_clip_tokenizer() -> Any:
    """The SD 1.x tokenizer (CLIP ViT-L/14, 49,408 tokens, max length 77, pad = `<|endoftext|>`).

    Equals `openai/clip-vit-large-patch14` / the `tokenizer/` of SD 1.5 repos: "a photo of a
    cat" → [49406, 320, 1125, 539, 320, 2368, 49407].
    """
    return load_clip_tokenizer()
