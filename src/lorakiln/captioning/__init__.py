"""`lorakiln caption`: write training captions with BLIP sentences or WD14 booru tags.

`files` holds what both methods share (finding images, keeping existing captions, atomic
writes, `metadata.jsonl`, the summary); `blip` and `tagger` only turn images into text;
`command` is the CLI front end. Every name below is imported on first use, so that
`lorakiln --help` (which imports `command`) loads neither Pillow nor torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CaptionSummary": "files", "OutputOptions": "files",
    "BlipOptions": "blip", "BlipCaptioner": "blip", "caption_with_blip": "blip", "load_blip": "blip",
    "DEFAULT_BLIP_MODEL": "blip",
    "TaggerOptions": "tagger", "WD14Tagger": "tagger", "tag_images": "tagger", "load_tagger": "tagger",
    "DEFAULT_TAGGER_MODEL": "tagger",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lorakiln.captioning.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lorakiln.captioning' has no attribute {name!r}")
