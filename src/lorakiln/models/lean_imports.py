"""Keep diffusers and peft from importing bitsandbytes, which only the 8-bit optimizers use.

Importing diffusers' model classes imports peft (``diffusers/hooks/layerwise_casting.py``) and
diffusers' quantizer registry, and both run ``import bitsandbytes`` whenever the package is
installed (``peft/helpers.py``, ``diffusers/quantizers/bitsandbytes/utils.py``); bitsandbytes
≥ 0.48 then looks for hub kernels (``kernels.get_kernel``) at import: about 1.5–3 s of every
`lorakiln train`/`generate` start on a CPU machine (`python -X importtime`; docs/performance.md
compares start-up with the diffusers training script). lorakiln loads no bitsandbytes-quantized
checkpoints and trains its own LoRA modules, not peft's.

So the CLI hides the package at start (`hide_bitsandbytes`): ``sys.modules["bitsandbytes"] =
None``, which `importlib.util.find_spec` reads as "not installed" (both libraries ask it, and
cache the answer) and which makes a stray ``import bitsandbytes`` fail instead of loading it. The
8-bit optimizers call `allow_bitsandbytes` before their own import, which then works as usual.
"""

from __future__ import annotations

import sys

_NAME = "bitsandbytes"


def hide_bitsandbytes() -> None:
    """Make bitsandbytes look absent until `allow_bitsandbytes` (a no-op once it is imported)."""
    if _NAME not in sys.modules:
        sys.modules[_NAME] = None  # type: ignore[assignment]


def allow_bitsandbytes() -> None:
    """Undo `hide_bitsandbytes`, so ``import bitsandbytes`` loads the package."""
    if _NAME in sys.modules and sys.modules[_NAME] is None:
        del sys.modules[_NAME]
