"""Tiny SD-1.x-shaped models built from config with fixed seeds.

Used by the tests and by the quickstart's default base model: SD 1.5's block structure
(4 U-Net levels, cross-attention in the first three down / last three up blocks, 2 resnets per
level, a 4-level VAE, a 12-layer CLIP text encoder) at tiny widths, so every module name — and
therefore every LoRA key — is the real one (names depend on block structure, not width), while a step runs in milliseconds.
The tokenizer is a real `CLIPTokenizer` over a small synthetic BPE vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakiln.models.clip_tokenizer import bytes_to_unicode, make_clip_tokenizer

#: Words that get their own whole-word token in the synthetic vocabulary, so captions used in
#: tests and the quickstart tokenize to short sequences; anything else falls back to bytes.
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "portrait", "style",
    "zwx", "sks", "person", "man", "woman", "dog", "cat", "toy", "shape", "circle", "square",
    "triangle", "star", "ring", "red", "green", "blue", "yellow", "orange", "purple", "white",
    "black", "grey", "gray", "background", "small", "large", "big", "painting", "oil", "hair",
)

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}

#: SD 1.x noise schedule (scaled-linear betas, 1000 steps, epsilon prediction).
SD1_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte→printable-unicode table (kept as an alias of the shared one)."""
    return bytes_to_unicode()


def tiny_vocab_and_merges(words: tuple[str, ...] = TINY_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The synthetic tokenizer's vocabulary and merges, in memory.

    The vocabulary follows CLIP's construction: every byte symbol, every byte symbol with the
    end-of-word marker `</w>`, one merge chain per word in `words`, then the two special tokens.
    Deterministic, so a tiny single file can rebuild its tokenizer from a name alone.
    """
    symbols = list(bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merged = a + b
            if (a, b) not in merges:
                merges.append((a, b))
            if merged not in seen:
                seen.add(merged)
                vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS, pad_token: str = "<|endoftext|>") -> Any:
    """The synthetic `CLIPTokenizer` built in memory (same ids as `write_tiny_tokenizer`).

    `pad_token="!"` gives the SDXL `tokenizer_2` variant (the byte symbol "!" has id 0 here too).
    """
    vocab, merges = tiny_vocab_and_merges(words)
    return make_clip_tokenizer(vocab, merges, pad_token=pad_token)


def write_tiny_tokenizer(folder: str | Path, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """Write `vocab.json` + `merges.txt` for a small CLIP BPE tokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = "\n".join(f"{a} {b}" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines + "\n", encoding="utf-8")
    return folder


@dataclass
class TinyComponents:
    """The parts of a tiny SD 1.x pipeline, before they are saved anywhere."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def build_tiny_sd1(tokenizer_dir: str | Path | None, seed: int = 0) -> TinyComponents:
    """Build a tiny SD-1.x-shaped pipeline's components with fixed seeds.

    `tokenizer_dir` receives the synthetic tokenizer files; `None` builds the same tokenizer in
    memory (no files), e.g. for the `tiny:sd1` base model.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if tokenizer_dir is None:
        tokenizer = tiny_tokenizer()
    else:
        write_tiny_tokenizer(tokenizer_dir)
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        **TINY_TEXT_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler(**SD1_SCHEDULER_CONFIG)
    for module in (unet, vae, text_encoder):
        module.eval()
    return TinyComponents(unet, vae, text_encoder, tokenizer, scheduler)


def save_tiny_sd1_diffusers(folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD 1.x model and save it as a diffusers folder (`model_index.json` layout)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    parts = build_tiny_sd1(folder / "tokenizer", seed=seed)
    pipe = StableDiffusionPipeline(
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


#: `lorakiln.configs` tokenizer name marking single files whose tokenizers are `tiny_tokenizer()`
#: (the vocabulary's name: the tiny SDXL uses it too, with its family's pad tokens).
TINY_TOKENIZER_NAME = "tiny-sd1"


def save_tiny_sd1_single_file(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny SD 1.x model and write it as one LDM-layout `.safetensors`.

    Same weights as `save_tiny_sd1_diffusers(folder, seed)`; the file's metadata names the
    tiny tokenizer so `load_base_model(path)` needs no config folder.
    """
    from lorakiln.models.ldm_export import save_ldm_single_file

    parts = build_tiny_sd1(None, seed=seed)
    return save_ldm_single_file(
        path, parts.unet, parts.vae, parts.text_encoder, scheduler=parts.scheduler,
        tokenizer_name=TINY_TOKENIZER_NAME,
    )


def build_tiny_sd1_bundle(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The tiny SD 1.x model as a `ModelBundle`, built in memory (the `tiny:sd1` base model)."""
    from lorakiln.models.bundle import ModelBundle
    from lorakiln.models.family import SD1
    from lorakiln.models.single_file import cast_module

    parts = build_tiny_sd1(None, seed=seed)
    return ModelBundle(
        family=SD1,
        unet=cast_module(parts.unet, dtype),
        vae=cast_module(parts.vae, dtype),
        text_encoders=[cast_module(parts.text_encoder, dtype)],
        tokenizers=[parts.tokenizer],
        noise_scheduler=parts.scheduler,
        source=f"tiny:sd1:{seed}" if seed else "tiny:sd1",
        name="tiny-sd1",
        extra={"format": "tiny", "seed": seed},
    )
