"""The one way an adapter patches a base layer: a forward hook on a module it does not own.

LoRA, LoHa, LoKr, DoRA, the generator's file adapters and ZipLoRA's merge modules all add
something to a frozen base layer's output. They share this base so attachment works the same
everywhere: the target is a plain attribute, not a submodule (a submodule would drag the base
weights into the adapter's ``state_dict`` and optimizer), and attaching/detaching is idempotent,
so strengths can be switched and adapters removed without touching the base weights.
"""

from __future__ import annotations

import torch
from torch import nn


class HookedAdapter(nn.Module):
    """Holds `target` and adds `_hook`'s result to its forward output while attached.

    Subclasses define ``_hook(module, args, output) -> output``.
    """

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_target", target)  # plain attribute: not a submodule
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def target(self) -> nn.Module:
        """The base module this adapter patches."""
        return self._target  # type: ignore[no-any-return]

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self) -> None:
        """Start patching the target's output (idempotent)."""
        if self._handle is None:
            self._handle = self.target.register_forward_hook(self._hook)

    def detach(self) -> None:
        """Stop patching the target; its output is the base output again (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
