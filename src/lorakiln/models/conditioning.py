"""Conditioning: captions → text-encoder states (+ pooled text and size/crop ids for SDXL).

Everything family-specific comes from `ModelFamily` data: which hidden state
(`te_hidden_state_index`: SD1 the last, SDXL the penultimate of both encoders), whether the
final layer norm applies (SD1 yes, SDXL no), which encoder's pooled projection is `text_embeds`,
and whether the U-Net takes SDXL's `time_ids`. Clip skip N moves the chosen state N-1 layers
further back (A1111/kohya: clip skip 2 on SD1 = penultimate state, normalised).
Captions are padded to the tokenizer's 77-token window; longer captions are truncated.

It lives in `models` because training (captions → U-Net conditioning), generation (prompt
emphasis through `encode_ids`) and ZipLoRA all encode text the same way, and what they share
must sit below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Conditioning:
    """What the U-Net takes besides the noisy latents and timesteps."""

    hidden: torch.Tensor  # [B, 77, sum of encoder widths]
    added_cond_kwargs: dict[str, torch.Tensor] | None = None


def encode_text(bundle: Any, captions: list[str], clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states concatenated over encoders, pooled text embeds or None) per the family."""
    return encode_ids(bundle, [tokenize(t, captions) for t in bundle.tokenizers], clip_skip)


def encode_ids(bundle: Any, ids_per_encoder: list[torch.Tensor], clip_skip: int = 1,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode token ids `[B, 77]` (one tensor per encoder). With per-token `weights` `[B, 77]`,
    each encoder's states are scaled token by token and rescaled to their original mean — A1111's
    prompt emphasis, `(word:1.2)`; the pooled embedding stays unweighted, as in A1111."""
    family = bundle.family
    index = family.te_hidden_state_index - (clip_skip - 1)
    hiddens, pooled = [], None
    for i, (ids, encoder) in enumerate(zip(ids_per_encoder, bundle.text_encoders, strict=True)):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden = out.hidden_states[index]
        if family.te_final_layer_norm:
            hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
        if weights is not None and not bool((weights == 1).all()):
            mean = hidden.mean()
            hidden = hidden * weights.to(hidden)[..., None]
            new_mean = hidden.mean()
            if new_mean.abs() > 1e-8:  # a zero-mean state (untrained LayerNorm) has no mean to restore
                hidden = hidden * (mean / new_mean)
        hiddens.append(hidden)
        if i == family.pooled_text_encoder_index:
            pooled = out.text_embeds  # CLIPTextModelWithProjection: projected pooled output
    return torch.cat(hiddens, dim=-1), pooled


class TextCache:
    """Text-encoder outputs per caption, for frozen encoders (kohya `cache_text_encoder_outputs`).

    A frozen encoder maps a caption to the same tensors every time, so each distinct caption is
    encoded once, and steps skip the text encoders entirely.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(self, bundle: Any, captions: list[str], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        for caption in dict.fromkeys(c for c in captions if (c, clip_skip) not in self.entries):
            # One caption at a time: the result is then independent of which captions happened to
            # share a batch, so a resumed run (empty cache) sees bit-identical conditioning.
            with torch.no_grad():
                hidden, pooled = encode_text(bundle, [caption], clip_skip)
            self.entries[(caption, clip_skip)] = (hidden[0], None if pooled is None else pooled[0])
        rows = [self.entries[(c, clip_skip)] for c in captions]
        hidden = torch.stack([h for h, _ in rows])
        pooled = None if rows[0][1] is None else torch.stack([p for _, p in rows])  # type: ignore[misc]
        return hidden, pooled


def time_ids(batch: Any, device: torch.device) -> torch.Tensor:
    """SDXL micro-conditioning per sample (Podell et al. 2023, §2.2): original size, crop
    top-left and target size, as the bucketing and cropping of this very sample produced them."""
    rows = [list(o) + list(c) + list(t) for o, c, t in
            zip(batch.original_sizes, batch.crop_top_lefts, batch.target_sizes, strict=True)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def condition(bundle: Any, batch: Any, captions: list[str], clip_skip: int, device: torch.device,
              cache: TextCache | None = None) -> Conditioning:
    """Everything the U-Net needs for `batch` (captions already processed); with `cache`, text
    outputs come from it (only valid while the encoders are frozen)."""
    hidden, pooled = (cache.encode(bundle, captions, clip_skip) if cache is not None
                      else encode_text(bundle, captions, clip_skip))
    extra: dict[str, torch.Tensor] = {}
    if bundle.family.uses_pooled_text and pooled is not None:
        extra["text_embeds"] = pooled
    if bundle.family.uses_time_ids:
        extra["time_ids"] = time_ids(batch, device).to(hidden.dtype)
    return Conditioning(hidden, extra or None)
