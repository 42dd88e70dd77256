"""The `[preservation]` section: output preservation as options of the loss.

Kept out of `schema.py` (which it joins as `RunConfig.preservation`) so that file stays short. Its
base repeats `schema.Section`'s settings instead of importing it, which would be circular.

Both options are regularisers that need no class images (DreamBooth's prior preservation, Ruiz et
al. 2023, does, and costs a generation pass): the base model's own prediction on a prompt the
LoRA should leave alone is the target of the LoRA's prediction on that prompt, on the same noisy
latents and timesteps as the training step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorakiln.config.signals_schema import one_or_many


class PreservationConfig(BaseModel):
    """Differential output preservation (ai-toolkit's "DOP", also in sd-scripts-based trainers as
    `diff_output_preservation`) and blank prompt preservation (ai-toolkit's "BPP")."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    diff_output_preservation: bool = Field(
        False, description="Differential output preservation (ai-toolkit's DOP): each step also predicts "
        "the class prompt — the caption with the trigger word replaced by the class word, \"photo of zwx\" → "
        "\"photo of toy\" — once with the LoRA off (the target, the base model) and once with it on, and adds "
        "their mean-squared difference × preservation_weight to the loss, so the LoRA learns the concept "
        "without repainting its whole class. Captions without the trigger are skipped. Costs one U-Net "
        "forward without and one with gradients per step (the cost is printed before training). Not with "
        "train.mode = 'full'.")
    preservation_class: str | None = Field(
        None, description="The class word that replaces the trigger in the class prompt, e.g. \"woman\" or "
        "\"dog\". Unset: each kohya folder's class word (`10_zwx toy` → \"toy\"); an ImageFolder or hub "
        "dataset, or a kohya folder named without a class, must set it.")
    preservation_trigger: str | None = Field(
        None, description="The trigger word(s) replaced by the class word, comma-separated for several. "
        "Unset: each kohya folder's token (`10_zwx toy` → \"zwx\"), else pivotal.token_abstraction when "
        "pivotal tuning, else output.trigger_phrase. A caption holding `<trigger> <class>` becomes just the "
        "class word.")
    preservation_weight: float = Field(1.0, ge=0.0, description="Weight of the class-prompt preservation "
                                       "loss (ai-toolkit's `diff_output_preservation_multiplier`).")
    blank_prompt_preservation: bool = Field(
        False, description="Blank prompt preservation (ai-toolkit's BPP): the same with the empty prompt "
        "instead of the class prompt, for every image, so the unconditional prediction that classifier-free "
        "guidance subtracts stays the base model's. Combined with diff_output_preservation the two "
        "prompts share the extra forward passes (the batch doubles in them).")
    blank_prompt_weight: float = Field(1.0, ge=0.0, description="Weight of the blank-prompt "
                                       "preservation loss, separate from preservation_weight (ai-toolkit "
                                       "also keeps its own `blank_prompt_preservation_multiplier`).")

    preservation_prompts: list[str] = Field(
        default_factory=list, description="Prompts of other things the LoRA should leave alone, e.g. "
        "[\"an orange square\", \"an orange circle\"] when the concept's colour bleeds onto other shapes in "
        "the grids: the same preservation on them, one prompt per image per step in turn (each is met "
        "every len(prompts) images), with the LoRA off for the target and on for the prediction. They must "
        "not hold the trigger word. Shares the extra passes with the class and blank prompts.")
    preservation_prompts_weight: float = Field(1.0, ge=0.0, description="Weight of the "
                                               "preservation_prompts loss, separate from the other two.")

    _one_or_many_prompts = field_validator("preservation_prompts", mode="before")(one_or_many)

    @property
    def enabled(self) -> bool:
        """Any output preservation is on (then the extra forward passes run)."""
        return self.diff_output_preservation or self.blank_prompt_preservation or bool(self.preservation_prompts)
