"""The `[validation]` keys of the per-file quality signals (training/file_signals.py).

They live in their own mixin so `schema.py` stays short and readable; `ValidationConfig`
inherits them, so they are ordinary `[validation]` keys (documented in `docs/config.md`, set in
the UI's "Samples and validation" group). The validation loss follows SimpleTuner's eval loss
(held-out images, fixed noise and timesteps); the drift score follows the idea behind ai-toolkit's
differential output preservation: what the LoRA changes on prompts it was not meant to learn.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


def one_or_many(value: object) -> object:
    """A TOML key that takes a list also takes one string (`drift_prompts = "a red car"`)."""
    return [value] if isinstance(value, str) else value


class SignalFields(BaseModel):
    """Per-saved-file signals that need no extra model: validation loss and drift."""

    signals: bool = Field(True, description="At every saved LoRA (epoch, step and final files) measure "
                          "its validation loss (with held-out images) and its drift score, print them, log "
                          "them to TensorBoard and the events file, and end the run with a table and a "
                          "recommended file and strength.")
    validation_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of the training images held "
                                    "out (never trained on) for the validation loss, chosen by `train.seed`; "
                                    "a folder keeps at least one image. 0 = none.")
    validation_images: str | None = Field(None, description="A folder of held-out images with captions (kohya "
                                          "folder, ImageFolder or captioned images) for the validation loss, "
                                          "instead of or besides `validation_split`.")
    signal_timesteps: int = Field(4, ge=1, le=64, description="Fixed timesteps, spread evenly over the noise "
                                  "schedule, at which each held-out image and drift prompt is measured; "
                                  "the noise is seeded by `validation_seed`, so files compare.")
    drift_prompts: list[str] = Field(default_factory=list, description="Prompts the LoRA should leave alone, "
                                     "added to the class prompts (trigger replaced by the class word) and "
                                     "the blank prompt for the drift score. Output preservation trains the "
                                     "class prompts (DOP) and the blank prompt toward the base, so those are "
                                     "left out of the score while it is on: give other subjects here.")
    # Calibrated on the toy world (docs/toyworld.md, bench/quality.py): a drift of 0.001 went with
    # 92 % of the base model's right pictures kept, 0.008 with 71 %, 0.019 with 53 %; 0.002 keeps
    # about nine in ten. The first default, 0.05, was never reached even by the recipe that spoiled
    # half of them.
    drift_threshold: float = Field(0.002, gt=0.0, description="Largest acceptable drift: mean ‖ε_lora − "
                                   "ε_base‖² / mean ‖ε_base‖² on the drift prompts. The recommendation takes "
                                   "the lowest validation loss among files under it, lowering the strength "
                                   "(1.0 … 0.5) until a file is under it. On the toy world a drift of 0.001 "
                                   "kept 92 % of the base model's right pictures, 0.008 kept 71 %, 0.019 kept "
                                   "53 %; raise it to accept more change.")

    _one_or_many_drift = field_validator("drift_prompts", mode="before")(one_or_many)
