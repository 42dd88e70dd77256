"""Prompt emphasis as AUTOMATIC1111 applies it: `(word:1.2)`, `(word)`, `[word]`.

The prompt is split into (text, weight) pieces (`prompt_syntax.parse_prompt_attention`), each
piece tokenized on its own, and every token carries its piece's weight into `encode_ids`, which
scales the text-encoder states and restores their mean. Prompts longer than one 75-token window
are cut (A1111 would add windows; a warning says so). `BREAK` is dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lorakiln.inference.prompt_syntax import parse_prompt_attention
from lorakiln.models.conditioning import encode_ids

logger = logging.getLogger("lorakiln")


def weighted_ids(pipe: Any, tokenizer: Any, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[1, 77]` and per-token weights `[1, 77]` for one prompt and tokenizer."""
    window = tokenizer.model_max_length
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_prompt_attention(prompt):
        if text == "BREAK":
            continue
        if hasattr(pipe, "maybe_convert_prompt"):  # expands multi-vector embedding names
            text = pipe.maybe_convert_prompt(text, tokenizer)
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    if len(ids) > window - 2:
        logger.warning("prompt is %d tokens; only the first %d are used: %r", len(ids), window - 2, prompt[:80])
        ids, weights = ids[: window - 2], weights[: window - 2]
    pad = tokenizer.pad_token_id
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    weights = [1.0, *weights, 1.0]
    ids += [pad] * (window - len(ids))
    weights += [1.0] * (window - len(weights))
    return torch.tensor([ids]), torch.tensor([weights])


def encode_prompt(pipe: Any, bundle: Any, prompt: str, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeds `[1, 77, D]`, pooled embeds or None) with A1111 emphasis."""
    pairs = [weighted_ids(pipe, tok, prompt) for tok in bundle.tokenizers]
    with torch.no_grad():
        return encode_ids(bundle, [ids for ids, _ in pairs], clip_skip, weights=pairs[0][1])
