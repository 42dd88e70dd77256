"""A diffusers text-to-image pipeline over a `ModelBundle`'s own modules.

The pipeline shares the bundle's U-Net, VAE and text encoders (no copy, no reload), so any LoRA
hooked into them — a network being trained, or one loaded for generation — is active in the
pipeline. Which pipeline class and which component names to use come from the model family
(`pipeline_class`, `te_diffusers_prefixes`), not from `if sdxl` branches.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle


def tokenizer_name(text_encoder_name: str) -> str:
    """diffusers names tokenizers after their encoders: text_encoder_2 → tokenizer_2."""
    return text_encoder_name.replace("text_encoder", "tokenizer")


def inference_scheduler(bundle: ModelBundle) -> Any:
    """Euler (A1111's "Euler") with the model's own betas and prediction type."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(bundle.noise_scheduler.config)


def build_pipeline(bundle: ModelBundle, scheduler: Any | None = None) -> Any:
    """The family's diffusers pipeline over the bundle's modules (progress bar disabled)."""
    import diffusers

    cls = getattr(diffusers, bundle.family.pipeline_class)
    parts: dict[str, Any] = {"unet": bundle.unet, "vae": bundle.vae,
                             "scheduler": scheduler or inference_scheduler(bundle)}
    for name, encoder, tokenizer in zip(bundle.family.te_diffusers_prefixes, bundle.text_encoders,
                                        bundle.tokenizers, strict=True):
        parts[name] = encoder
        parts[tokenizer_name(name)] = tokenizer
    accepted = inspect.signature(cls.__init__).parameters
    for optional in ("safety_checker", "feature_extractor", "image_encoder"):
        if optional in accepted:
            parts[optional] = None
    if "requires_safety_checker" in accepted:
        parts["requires_safety_checker"] = False
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
