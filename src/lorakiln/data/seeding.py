"""Seeds derived from (seed, labels...): the only source of randomness in the data pipeline.

Deriving a fresh generator per (seed, purpose, epoch, step) instead of keeping one running
generator is what makes a resumed run see exactly the batches, captions, crops and class
samples an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from `seed` and labels; stable across processes (unlike `hash()`)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
