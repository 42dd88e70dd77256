"""Is this trigger word a good choice? A check with the real SD CLIP tokenizer, offline.

The kohya_ss + AUTOMATIC1111 LoRA walkthrough warns that a common name (`john`, `mary`) "will be diluted by what the model has
already learned", and points at SD 1.5's `tokenizer/vocab.json`: "ideally you should pick one
that isn't on that list". That list is CLIP's BPE vocabulary, which lorakiln ships (it is fully
determined by the bundled merges, `models/clip_tokenizer.py`), so the check needs no network.

What a token's vocabulary entry says:

* a **whole word** is one entry ending in `</w>`; its id is its *rank*: ids after the 512 byte
  symbols follow the order in which BPE merged pairs while building the vocabulary, i.e. roughly
  how frequent the string was in CLIP's training captions. `john</w>` is id 1742, `mary</w>`
  2676: common words with a strong prior meaning. `ohwx</w>` (47,993) and `sks</w>` (48,136)
  are rare whole words — a single token with little meaning, which is why kohya users pick them
  (though `sks` is also a rifle).
* a word **not** in the vocabulary is split into pieces (`anantn` → `an` `ant` `n</w>`); it
  costs more of the 75-token prompt budget, and a final piece that is itself a common word
  (`zwxstyle` → … `style</w>`) drags that word's meaning in.

A rank is not a frequency, though. BPE merges the most frequent *pair* of symbols at each step,
so a common word's inflected form can be merged very late, after its stem was absorbed into other
merges: `hells</w>` is built as `h` + `ells</w>` at rank 47,989 — next to `ohwx</w>` (47,993) —
although it is plainly "hell" + "s". So a whole word is also judged by its stem: when removing an
English inflection (-s, -es, -ies, -ed, -ing, -er, -est, -ly, -y, -'s; a doubled consonant or a
dropped `e` restored) leaves a common whole word (`hell</w>`, rank 4,141), the word is judged as
common. Rare then means what kohya users want from `ohwx`: one token, and neither it nor its stem
an everyday word.

SDXL's second tokenizer (OpenCLIP ViT-bigG) uses the same vocabulary and merges, so one check
covers both encoders. Pivotal tuning (`[pivotal]`) sidesteps the question: it inserts brand-new
tokens instead of reusing vocabulary entries (the diffusers advanced SDXL recipe).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

#: Ids below this are single byte symbols (256 plain + 256 with `</w>`), not learned merges.
FIRST_MERGE_ID = 512
#: Whole words ranked below this are everyday words (names, colours, objects): the kohya_ss
#: walkthrough's "john"/"mary" case. ~10k covers the common English vocabulary of CLIP's captions.
COMMON_RANK = 10_000
#: Whole words ranked above this are rare enough to act as a near-blank single token.
RARE_RANK = 40_000


@dataclass(frozen=True)
class TokenReport:
    """What the SD CLIP tokenizer makes of one trigger word, and a verdict."""

    token: str
    pieces: tuple[str, ...]
    ids: tuple[int, ...]
    whole_word: bool
    rank: int | None  # the id when the token is one whole word
    verdict: str  # "common-word" | "whole-word" | "rare-word" | "pieces"
    message: str
    stem: str | None = None  # the common word it is a form of ("hells" -> "hell"), if any
    stem_rank: int | None = None
    common_pieces: tuple[str, ...] = ()  # pieces that are themselves common whole words
    suggestions: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """False for the 'john'/'mary' case: a common word the model already knows well."""
        return self.verdict != "common-word"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def format(self) -> str:
        """Human-readable lines for the CLI."""
        pieces = " ".join(p.replace("</w>", "·") for p in self.pieces)
        lines = [f"token {self.token!r}: {len(self.pieces)} piece(s) [{pieces}] ids {list(self.ids)}",
                 f"  {'ok' if self.ok else 'warning'}: {self.message}"]
        if self.suggestions:
            lines.append("  rarer alternatives: " + ", ".join(self.suggestions))
        return "\n".join(lines)


@functools.cache
def _tokenizer() -> Any:
    from lorakiln.models.clip_tokenizer import load_sd1_clip_tokenizer

    return load_sd1_clip_tokenizer()


@functools.cache
def _vocab() -> dict[str, int]:
    return dict(_tokenizer().get_vocab())


def tokenize(text: str) -> tuple[list[str], list[int]]:
    """CLIP BPE pieces and ids of `text` (lower-cased, as the SD tokenizer does)."""
    pieces = _tokenizer().tokenize(text)
    vocab = _vocab()
    return pieces, [vocab[p] for p in pieces]


def _is_common_word(piece: str, vocab: dict[str, int]) -> bool:
    """A word-final piece that is an everyday word of 4+ letters (`style</w>`).

    Word-final pieces double as whole words in CLIP's vocabulary; short ones (`n</w>`, `ggy</w>`)
    are mostly word endings, so only longer ones are flagged.
    """
    return piece.endswith("</w>") and len(piece) >= 8 and FIRST_MERGE_ID <= vocab[piece] < COMMON_RANK


#: Inflections removed to find a word's stem, longest first (see the module docstring).
_INFLECTIONS = ("ies", "ied", "ing", "ers", "est", "'s", "es", "ed", "er", "ly", "s", "y")


def word_stems(word: str) -> list[str]:
    """Candidate stems of an English word form: `hells` → hell, `ladies` → lady, `baked` → bake,
    `running` → run. Stems shorter than 3 letters are not tried (`sks` is not a form of `sk`)."""
    w = word.lower()
    out: list[str] = []
    for suffix in _INFLECTIONS:
        base = w[: -len(suffix)]
        if not w.endswith(suffix) or len(base) < 3 or not base.isalpha():
            continue
        if suffix in ("ies", "ied"):
            candidates = [base + "y"]
        else:
            candidates = [base]
            if suffix in ("ed", "ing", "er", "est", "es", "ers"):
                candidates.append(base + "e")
                if len(base) >= 4 and base[-1] == base[-2] and base[-1] not in "aeiou":
                    candidates.append(base[:-1])
        out += [c for c in candidates if c not in out]
    return out


def common_stem(word: str, vocab: dict[str, int]) -> tuple[str, int] | None:
    """(stem, rank) when `word` is a form of a common whole word of the vocabulary, else None."""
    ranked = [(stem, vocab[stem + "</w>"]) for stem in word_stems(word) if stem + "</w>" in vocab]
    common = [(stem, rank) for stem, rank in ranked if FIRST_MERGE_ID <= rank < COMMON_RANK]
    return min(common, key=lambda pair: pair[1]) if common else None


def check_token(token: str, *, suggest: int = 5) -> TokenReport:
    """Tokenize `token` and judge it as a trigger word (see the module docstring)."""
    word = token.strip()
    if not word:
        raise ValueError("the trigger token is empty")
    vocab = _vocab()
    pieces, ids = tokenize(word)
    whole = len(pieces) == 1 and pieces[0].endswith("</w>")
    rank = ids[0] if whole else None
    common = tuple(p.removesuffix("</w>") for p in pieces if _is_common_word(p, vocab)) if not whole else ()
    stem = common_stem(word, vocab) if whole and rank is not None and rank >= COMMON_RANK else None
    if whole and rank is not None and rank < COMMON_RANK:
        verdict = "common-word"
        message = (f"{word!r} is a common word in the SD vocabulary (rank {rank} of 49,408): the base model "
                   "already knows it, so the LoRA's subject will be mixed with that meaning (the kohya_ss "
                   "community 'john'/'mary' warning). Pick a word that is not in the vocabulary.")
    elif stem is not None:
        verdict = "common-word"
        message = (f"{word!r} is one vocabulary token (rank {rank} of 49,408), but it is a form of the common "
                   f"word {stem[0]!r} (rank {stem[1]}): a late BPE merge, not a rare word. The base model "
                   "already knows its meaning, so the LoRA's subject will be mixed with it (the kohya_ss "
                   "community 'john'/'mary' warning). Pick a word that is not in the vocabulary.")
    elif whole and rank is not None and rank >= RARE_RANK:
        verdict = "rare-word"
        message = (f"{word!r} is a single, rare vocabulary word (rank {rank}) and not a form of a common one: "
                   "little prior meaning, one token of the 75-token budget (kohya users' 'ohwx' is one). "
                   "A fine choice.")
    elif whole:
        verdict = "whole-word"
        message = (f"{word!r} is a vocabulary word of middling frequency (rank {rank}): it carries some "
                   "meaning the subject will inherit; a word outside the vocabulary is safer.")
    else:
        verdict = "pieces"
        message = (f"{word!r} is not in the vocabulary: it is split into {len(pieces)} pieces, so it has no "
                   "single prior meaning (kohya_ss community advice).")
        if common:
            message += (f" But the piece(s) {', '.join(repr(c) for c in common)} are common words whose "
                        "meaning comes along; consider dropping them from the token.")
        if len(pieces) > 3:
            message += f" {len(pieces)} pieces is long: a shorter token leaves more of the 75-token budget."
    wants_alternatives = verdict in ("common-word", "whole-word") or bool(common)
    suggestions = tuple(suggest_tokens(word, suggest)) if suggest and wants_alternatives else ()
    return TokenReport(token=word, pieces=tuple(pieces), ids=tuple(ids), whole_word=whole, rank=rank,
                       verdict=verdict, message=message, common_pieces=common, suggestions=suggestions,
                       stem=stem[0] if stem else None, stem_rank=stem[1] if stem else None)


@functools.cache
def _rare_whole_words() -> tuple[str, ...]:
    """Short, letters-only rare whole words with at most one vowel (`ohwx`, `sks`, …).

    The vowel limit skips rare but real words (`stale`, `nestle`) that still carry a meaning,
    and forms of common words (`hells`) are left out too.
    """
    vocab = _vocab()
    return tuple(w[:-4] for w, i in vocab.items()
                 if i >= RARE_RANK and w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha()
                 and 3 <= len(w) - 4 <= 5 and sum(c in "aeiouy" for c in w[:-4]) <= 1
                 and common_stem(w[:-4], vocab) is None)


def _variants(word: str) -> list[str]:
    """Spelling variants of the user's own token (kept recognisable to the user)."""
    w = "".join(c for c in word.lower() if c.isalnum()) or "tok"
    consonants = "".join(c for c in w if c not in "aeiou") or w
    return [w + "x", w[:-1] + "zx", consonants, "z" + consonants, w + "kn", w + "vv", w[:3] + "qz"]


def suggest_tokens(word: str, n: int = 5) -> list[str]:
    """Up to `n` trigger words outside the common vocabulary, close to `word` where possible.

    Half are variants of `word` that split into at most three pieces with no common-word piece;
    the rest are rare single-token words from the vocabulary, most similar to `word` first.
    """
    vocab = _vocab()
    out: list[str] = []
    for candidate in _variants(word):
        pieces, ids = tokenize(candidate)
        whole_common = len(pieces) == 1 and (ids[0] < RARE_RANK or common_stem(candidate, vocab) is not None)
        if (candidate != word.lower() and candidate not in out and len(pieces) <= 3 and not whole_common
                and not any(_is_common_word(p, vocab) for p in pieces)):
            out.append(candidate)
        if len(out) >= (n + 1) // 2:
            break
    rare = sorted(_rare_whole_words(), key=lambda r: (-difflib.SequenceMatcher(None, word.lower(), r).ratio(), r))
    out += [r for r in rare if r not in out][: n - len(out)]
    return out
