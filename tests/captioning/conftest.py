"""Tiny captioning models built offline once per session, and an image writer.

* `tiny_blip_dir`: a BLIP captioner a few kB big (32 px images, 2 layers, a 30-word BERT vocab),
  saved with `save_pretrained` so the tests load it exactly like a downloaded model. Its LM
  head bias makes [SEP] (end of caption) overwhelmingly likely and the special tokens
  impossible, so every caption is exactly as long as `min_length` forces it to be: that turns
  "min_length reached generate" into a word count.
* `tiny_wd14_dir`: a WD14-shaped tagger (`model.onnx` NHWC [batch, 16, 16, 3] + `selected_tags.csv`)
  whose probabilities are sigmoid(W · mean colour + b) over the *BGR* channel means, so a red,
  blue or green picture fires known tags (see `WD14_LOGITS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from captioning_support import MakeImage, build_tiny_blip, build_tiny_wd14
from PIL import Image


@pytest.fixture(autouse=True)
def _quiet_libraries() -> Iterator[None]:
    """No transformers / hub progress bars in these tests' output; restored afterwards, because
    other test folders assert on the warnings transformers logs."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@pytest.fixture
def make_image() -> MakeImage:
    """Write a solid-colour image (or garbage bytes with `broken=True`); returns its path."""

    def _make(path: Path, size: tuple[int, int] = (24, 24), color: tuple[int, int, int] = (200, 30, 30), *,
              broken: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if broken:
            path.write_bytes(b"this is not an image")
        else:
            Image.new("RGB", size, color).save(path)
        return path

    return _make


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BLIP folder (seed 0). Treat as read-only."""
    return build_tiny_blip(tmp_path_factory.mktemp("tiny_blip") / "tiny-blip", seed=0)


@pytest.fixture(scope="session")
def tiny_wd14_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour tagger folder. Treat as read-only."""
    return build_tiny_wd14(tmp_path_factory.mktemp("tiny_wd14") / "wd14")
