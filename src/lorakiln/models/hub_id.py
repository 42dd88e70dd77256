"""The one rule for "is this text a Hugging Face Hub id (`owner/name`)?".

A model, VAE, caption model or dataset can be named by a local path or by a hub id, and the two
look alike (`models/sd15` is both). Every place that must tell them apart — resolving a config's
relative paths, the preflight check, the loaders, the dataset layout check, the web UI's sandbox
and the caption models — asks this module, so a value is never a hub id to one and a path to
another. Torch-free and import-free, so config checks stay instant.

The rule is about shape only; what exists on disk wins, and callers check that first (a loader
takes an existing folder before asking the hub).
"""

from __future__ import annotations

import re

__all__ = ["FILE_SUFFIXES", "looks_like_hub_id"]

#: `owner/name`: one slash, each part starting with a letter or digit, then letters, digits, `_.-`
#: (huggingface_hub's `validate_repo_id` characters).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Names that are files, never repositories: weights, pickles, run configs.
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".toml", ".json")


def looks_like_hub_id(value: str) -> bool:
    """`owner/name` as the Hub spells repositories: no `..` or `--` (the Hub refuses both, and
    `..` would climb out of a folder), no leading `.`, `~` or `/`, not a file name."""
    return (bool(_HUB_ID.fullmatch(value)) and ".." not in value and "--" not in value
            and not value.lower().endswith(FILE_SUFFIXES))
