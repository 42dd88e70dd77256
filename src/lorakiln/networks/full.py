"""Full fine-tuning as a "network": every weight of the U-Net (and text encoders) is trained.

sd-scripts keeps this in separate scripts (`fine_tune.py`, `train_db.py`) and diffusers in
`train_text_to_image.py`; lorakiln runs it through the same loop as LoRA training by giving the
trainer an object with the LoRA network's interface (parameter groups, state dict, freezing the
text encoders at `train_text_encoder_frac`). It is also how lorakiln pretrains a model from
scratch (the toy world's base model). The output is a whole model, not an adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lorakiln.errors import LorakilnError
from lorakiln.models.family import ModelFamily


class FullNetwork(nn.Module):
    """The trained parts of a base model, registered as submodules `unet`, `text_encoder_{i}`.

    Registering them makes `state_dict()` the whole trained model (for resume states) and
    `.train()`/`.to()` reach the real modules.
    """

    def __init__(self, family: ModelFamily, unet: nn.Module, text_encoders: list[nn.Module],
                 train_text_encoder: bool) -> None:
        super().__init__()
        self.family = family
        self.unet = unet
        self.text_encoders = nn.ModuleList(text_encoders if train_text_encoder else [])
        self.parts = {"unet": "unet"} | {f"text_encoder_{i}": "text_encoder" for i in range(len(self.text_encoders))}
        unet.requires_grad_(True)
        for encoder in self.text_encoders:
            encoder.requires_grad_(True)

    def loras(self, part: str | None = None) -> Iterator[tuple[str, Any]]:
        """No adapter modules: the weights themselves are trained."""
        return iter(())

    @property
    def trains_text_encoder(self) -> bool:
        return len(self.text_encoders) > 0 and any(p.requires_grad for p in self.text_encoders.parameters())

    def freeze_text_encoders(self) -> None:
        """Stop training the text encoders (`train_text_encoder_frac`); the U-Net trains on."""
        for encoder in self.text_encoders:
            encoder.requires_grad_(False)

    def param_groups(self, unet_lr: float | None, text_encoder_lr: float | None,
                     default_lr: float) -> list[dict[str, Any]]:
        """One group for the U-Net and one for the text encoders, as for a LoRA."""
        groups = [{"name": "unet", "params": list(self.unet.parameters()),
                   "lr": default_lr if unet_lr is None else unet_lr}]
        if len(self.text_encoders):
            groups.append({"name": "text_encoder", "params": list(self.text_encoders.parameters()),
                           "lr": default_lr if text_encoder_lr is None else text_encoder_lr})
        return groups

    def remove(self) -> None:
        """Nothing to detach: generation uses the trained weights directly."""

    def attach(self) -> None:
        """Nothing to attach (see `remove`)."""

    def load_kohya_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a resume state's weights strictly, naming mismatched keys."""
        missing, unexpected = self.load_state_dict(dict(state_dict), strict=False)
        if missing or unexpected:
            raise LorakilnError(f"the saved state does not match this model: {len(missing)} missing "
                                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                                "was it saved with another base model or train_text_encoder setting?")
