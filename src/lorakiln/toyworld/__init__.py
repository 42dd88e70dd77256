"""A procedural toy world of tiny captioned images, and detectors that read them back.

The world (`world`) is one coloured shape on a plain background, captioned
"a red circle on a grey background". Some shape–colour pairs are held out of training and one,
the orange star, is reserved as the LoRA concept "zwx". `render` draws scenes as anti-aliased
64-px images, `detect` names the shape, colour and background of an image (clean or
generated), and `dataset` writes kohya / ImageFolder training folders. Together they let a
small text-to-image model be trained from scratch on a CPU and its LoRA measured: likeness,
adaptability and drift. No torch is imported. See docs/toyworld.md.

The functions `render.render` and `detect.detect` are deliberately *not* re-exported here:
they share their modules' names, and a package attribute `detect` that is a function would
make `import lorakiln.toyworld.detect as m` return the function instead of the module.
Import them from their modules: `from lorakiln.toyworld.detect import detect`. The other
names load their module on first access, so `python -m lorakiln.toyworld.detect` (the
accuracy report) runs without the package having imported it already.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("write_concept_dataset", "write_scenes", "write_world_dataset"), "lorakiln.toyworld.dataset"),
    **dict.fromkeys(("Detection", "accuracy_report", "classify_shape", "format_report"), "lorakiln.toyworld.detect"),
    "degrade": "lorakiln.toyworld.render",
    **dict.fromkeys(("BACKGROUNDS", "COLOURS", "CONCEPT", "CONCEPT_TOKEN", "HELDOUT_PAIRS", "SHAPES", "Scene",
                     "all_pairs", "backgrounds_for", "caption", "concept_scenes", "describe", "heldout_pairs",
                     "parse_caption", "sample_scenes", "train_pairs"), "lorakiln.toyworld.world"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lorakiln.toyworld' has no attribute {name!r}")
