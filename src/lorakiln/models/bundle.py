"""`ModelBundle`: one loaded base model, whatever it was loaded from.

Loaders (diffusers folder, single file, hub id) all return this record, so the trainer,
exporter and generator never care where the weights came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorakiln.models.family import ModelFamily


@dataclass
class ModelBundle:
    """The components of a Stable Diffusion base model plus facts about its origin."""

    family: ModelFamily
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    #: Text encoders in pipeline order (one for SD 1.x, two for SDXL).
    text_encoders: list[Any]
    #: Tokenizers matching `text_encoders` one to one.
    tokenizers: list[Any]
    #: The training noise scheduler (DDPM with the model's betas and prediction type).
    noise_scheduler: Any
    #: What the user passed: a folder, a file or a hub id.
    source: str
    #: Short display name, e.g. the file stem; written as `ss_sd_model_name`.
    name: str
    #: `sha256` of a single-file checkpoint (A1111's `ss_new_sd_model_hash`), when known.
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        """`epsilon` or `v_prediction`, from the scheduler config."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def vae_needs_fp32(self) -> bool:
        """Whether the VAE must run in float32 even when training in half precision.

        True for a family whose stock VAE overflows in fp16 (SDXL), unless the loaded VAE's config
        opts out with `force_upcast: false` (fp16-fix VAEs, e.g. passed as `vae=`).
        """
        return self.family.vae_fp16_unsafe and bool(getattr(self.vae.config, "force_upcast", True))
