"""The bundled SD 1.x CLIP tokenizer and the in-memory tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

from lorakiln.models.clip_tokenizer import CLIP_VOCAB_SIZE, bundled_clip_merges, load_sd1_clip_tokenizer


def test_bundled_clip_tokenizer_known_ids() -> None:
    tok = load_sd1_clip_tokenizer()
    assert len(bundled_clip_merges()) == 48894
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>"
    padded = tok("A Photo of a CAT", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_tokenizer_in_memory_matches_files(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from lorakiln.models.tiny import tiny_tokenizer, write_tiny_tokenizer

    on_disk = CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path)))
    in_memory = tiny_tokenizer()
    text = "a photo of zwx cat, oil painting!"
    assert in_memory(text).input_ids == on_disk(text).input_ids
    assert len(in_memory) == len(on_disk)
