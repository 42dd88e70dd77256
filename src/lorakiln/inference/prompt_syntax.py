"""AUTOMATIC1111 prompt syntax: `<lora:name:0.8>` extra networks and `(word:1.3)` attention weights.

Prompts copied from A1111 (like the kohya_ss walkthrough's `a portrait of anantn, ..., <lora:last:1.0>`) must mean
the same here: the `<kind:args>` tags pick networks and strengths and are cut from the text the
text encoder sees; brackets scale the embedding of the words inside. Semantics follow A1111's
`modules/extra_networks.py` / `extensions-builtin/Lora/extra_networks_lora.py` and
`modules/prompt_parser.py` `parse_prompt_attention` (its documented examples are the tests);
the code here is written from those descriptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorakiln.errors import ConfigError

# A1111 `re_extra_net`: a word kind, a colon, then anything up to '>'.
EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")

#: Multiplier A1111 applies per `(...)` level; `[...]` divides by it.
ATTENTION_STEP = 1.1
#: Weight A1111 gives its BREAK marker (a chunk boundary, not text).
BREAK_WEIGHT = -1.0


@dataclass(frozen=True)
class ExtraNetworkCall:
    """One `<kind:arg:arg:...>` tag. Arguments split on ':'; `k=v` items are named (A1111 rule)."""

    kind: str
    items: tuple[str, ...]

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(i for i in self.items if len(i.split("=", 2)) != 2)

    @property
    def named(self) -> dict[str, str]:
        return dict(i.split("=", 1) for i in self.items if len(i.split("=", 2)) == 2)

    @property
    def name(self) -> str:
        """The network's name (first positional argument; files are looked up by it)."""
        return self.positional[0] if self.positional else ""

    @property
    def te(self) -> float:
        """Text-encoder multiplier: 2nd positional, overridden by `te=`; default 1.0."""
        pos = self.positional
        value = pos[1] if len(pos) > 1 else "1.0"
        return self._float("te", self.named.get("te", value))

    @property
    def unet(self) -> float:
        """U-Net multiplier: 3rd positional, overridden by `unet=`; default = the TE multiplier."""
        pos = self.positional
        if "unet" in self.named:
            return self._float("unet", self.named["unet"])
        return self._float("unet", pos[2]) if len(pos) > 2 else self.te

    @property
    def dyn(self) -> int | None:
        """Dynamic rank cut (`dyn=` or 4th positional); None = full rank."""
        raw = self.named.get("dyn", self.positional[3] if len(self.positional) > 3 else None)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"<{self.kind}:{':'.join(self.items)}>: dyn must be an integer, got {raw!r}") from None

    def _float(self, what: str, raw: str) -> float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(
                f"<{self.kind}:{':'.join(self.items)}>: {what} multiplier must be a number, got {raw!r}"
            ) from None


_SPACES_BEFORE_COMMA = re.compile(r"\s+,")
_REPEATED_COMMAS = re.compile(r",(\s*,)+")
_MANY_SPACES = re.compile(r"[ \t]{2,}")


def tidy_prompt(text: str) -> str:
    """Remove the ", ," and double spaces a cut tag leaves, and a dangling comma at either end."""
    text = _SPACES_BEFORE_COMMA.sub(",", text)
    text = _REPEATED_COMMAS.sub(",", text)
    text = _MANY_SPACES.sub(" ", text)
    return text.strip().strip(",").strip()


def extract_extra_networks(prompt: str, tidy: bool = False) -> tuple[str, list[ExtraNetworkCall]]:
    """Cut every `<kind:args>` tag out of `prompt`; return the remaining text and the calls in order.

    By default the text is left exactly as A1111's `extra_networks.parse_prompt` leaves it (the
    tag replaced by nothing, surrounding ", " kept), because the leftover comma tokens are part of
    what A1111 encodes and reproducing an A1111 image needs them. `tidy=True` cleans up
    (`tidy_prompt`) for display or for prompts that need not match A1111 token for token.
    """
    calls: list[ExtraNetworkCall] = []

    def cut(m: re.Match[str]) -> str:
        calls.append(ExtraNetworkCall(kind=m.group(1), items=tuple(m.group(2).split(":"))))
        return ""

    text = EXTRA_NETWORK_RE.sub(cut, prompt)
    return (tidy_prompt(text) if tidy else text), calls


# Tokens of A1111's attention grammar, in priority order: escapes (\( \) \[ \] \\ and a lone \,
# which A1111 drops),
# openers, `:number)` closers, plain closers, text runs, and a stray ':' (plain text).
_ATTENTION_TOKEN = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\]|\\)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs with A1111's emphasis rules.

    `(x)` ×1.1, `[x]` ÷1.1, `(x:1.5)` ×1.5; nesting multiplies; an unclosed bracket applies to the
    rest of the prompt; `\\(` `\\)` `\\[` `\\]` are literal; a closer with no opener is ignored;
    `BREAK` becomes its own ("BREAK", -1.0) entry; neighbouring runs of equal weight merge.
    """
    runs: list[list] = []  # [text, weight], mutable so brackets can rescale earlier runs
    round_open: list[int] = []  # index into runs where each open bracket started
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        token = m.group(0)
        if m.group("escape"):
            runs.append([token[1:], 1.0])  # a lone "\\" yields "", as in A1111
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif m.group("weight") is not None and round_open:
            scale_from(round_open.pop(), float(m.group("weight")))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ATTENTION_STEP)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), 1 / ATTENTION_STEP)
        else:  # text, a stray ':', or an unmatched closer / weight: all plain text
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    runs.append(["BREAK", BREAK_WEIGHT])
                runs.append([part, 1.0])

    for start in round_open:
        scale_from(start, ATTENTION_STEP)
    for start in square_open:
        scale_from(start, 1 / ATTENTION_STEP)

    if not runs:
        return [("", 1.0)]
    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]
