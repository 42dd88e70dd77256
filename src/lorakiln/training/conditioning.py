"""Text conditioning for SD 1.x: captions → CLIP hidden states, with A1111/kohya clip skip.

Clip skip N takes the hidden state N layers from the end and applies the final layer norm
to it, as kohya's `get_hidden_states` and A1111 do (clip skip 1 = the normal last layer).
Captions are padded to the tokenizer's 77-token window; longer captions are truncated.
"""

from __future__ import annotations

from typing import Any

import torch


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids `[B, 77]`, padded to the model window."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_tokens(text_encoder: Any, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Hidden states `[B, 77, D]` for the cross-attention of the U-Net."""
    input_ids = input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    hidden = out.hidden_states[-clip_skip]
    # A1111 "CLIP stop at last layers": the penultimate state still goes through final_layer_norm.
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden)


def encode_captions(tokenizer: Any, text_encoder: Any, captions: list[str], clip_skip: int = 1) -> torch.Tensor:
    """Tokenize and encode captions in one call."""
    return encode_tokens(text_encoder, tokenize(tokenizer, captions), clip_skip)


def overlong_captions(tokenizer: Any, captions: dict[str, str]) -> list[tuple[str, int]]:
    """(file, token count) of captions longer than the 75-token window; their tail is cut off
    (CLIP's 77 positions minus start/end), so words at the end never reach the model."""
    limit = tokenizer.model_max_length - 2
    out = []
    for name, caption in captions.items():
        n = len(tokenizer(caption, truncation=False).input_ids) - 2
        if n > limit:
            out.append((name, n))
    return out
