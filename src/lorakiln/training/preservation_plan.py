"""Output preservation before any model: which words make each image's class prompt, the config
errors, and the cost line printed before training.

Torch-free like `plan.py` (whose `describe_plan` calls `check_preservation`), so `--dry-run`
fails on a missing class word exactly where the real run would — before the model loads.

The class prompt follows ai-toolkit's differential output preservation: the caption with the
trigger word replaced by the class word ("photo of zwx on a table" → "photo of toy on a table").
A kohya folder `<repeats>_<token> <class>` names both words already; an ImageFolder or hub dataset
names neither, so `preservation.preservation_class` (and a trigger) must be given there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.errors import ConfigError

if TYPE_CHECKING:
    from lorakiln.config.schema import RunConfig
    from lorakiln.data.dataset import Dataset

#: Rough cost of one U-Net pass in units of a forward: a training step is a forward and a backward
#: (≈ 2 forwards), so 3 units; a no-grad forward adds 1, a forward with gradients adds 3.
_STEP_UNITS = 3.0


@dataclass(frozen=True)
class ClassWords:
    """The trigger word(s) of one subset and the class word that replaces them."""

    triggers: tuple[str, ...]
    klass: str

    def class_prompt(self, caption: str) -> str | None:
        """The caption with each trigger replaced by the class word (a `"<trigger> <class>"` pair,
        kohya's fallback caption, becomes the class word once); None when no trigger occurs, as
        then there is nothing to tell apart and preserving that caption would undo the training."""
        out, found = caption, False
        for trigger in self.triggers:
            for pattern in (rf"(?<!\w){re.escape(trigger)}\s+{re.escape(self.klass)}(?!\w)",
                            rf"(?<!\w){re.escape(trigger)}(?!\w)"):
                out, n = re.subn(pattern, self.klass, out)
                found = found or n > 0
        return out if found else None


def _split(words: str | None) -> tuple[str, ...]:
    return tuple(w.strip() for w in (words or "").split(",") if w.strip())


def _is_kohya(cfg: RunConfig) -> bool:
    from lorakiln.data.layout import detect_layout

    d = cfg.data
    return d.dataset_name is None and bool(d.train_data_dir) and detect_layout(d.train_data_dir) == "kohya"


def _default_triggers(cfg: RunConfig) -> tuple[str, ...]:
    """Triggers when neither the config nor a kohya folder names one."""
    if cfg.pivotal.train_text_encoder_ti:
        return _split(cfg.pivotal.token_abstraction)
    return _split(cfg.output.trigger_phrase)


def class_words(cfg: RunConfig, dataset: Dataset) -> dict[Path, ClassWords]:
    """Each instance image's class words, for `diff_output_preservation` (empty when it is off).
    Raises one ConfigError naming every folder without a class word or a trigger."""
    p = cfg.preservation
    if not p.diff_output_preservation:
        return {}
    kohya = _is_kohya(cfg)
    out: dict[Path, ClassWords] = {}
    problems: list[str] = []
    for subset in dataset.subsets:
        triggers = _split(p.preservation_trigger) or ((subset.token,) if kohya and subset.token else ())
        triggers = triggers or _default_triggers(cfg)
        klass = p.preservation_class or (subset.class_token if kohya else None)
        where = f"folder {subset.name!r}" if kohya else "this dataset (ImageFolder/hub: no folder names)"
        if not klass:
            problems.append(f"{where} has no class word: set preservation.preservation_class, e.g. \"person\"")
        if not triggers:
            problems.append(f"{where} has no trigger word: set preservation.preservation_trigger")
        if klass and triggers:
            words = ClassWords(triggers, klass)
            out |= {item.path: words for item in subset.items}
    if problems:
        raise ConfigError("preservation.diff_output_preservation needs a class prompt:\n  "
                          + "\n  ".join(dict.fromkeys(problems)))
    return out


def check_preservation(cfg: RunConfig, dataset: Dataset, log: Callable[[str], None] | None = print) -> None:
    """Config errors before the model loads, then the warnings and the cost line."""
    p = cfg.preservation
    if not p.enabled:
        return
    if cfg.train.mode == "full":
        raise ConfigError("output preservation needs the LoRA switched off for the base prediction; "
                          "with train.mode = 'full' there is no base model left: use mode = 'lora'")
    words = class_words(cfg, dataset)
    triggers = {t.lower() for t in (*_default_triggers(cfg), *_split(p.preservation_trigger),
                                    *(s.token for s in dataset.subsets if s.token))}
    for prompt in p.preservation_prompts:
        held = [t for t in triggers if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", prompt.lower())]
        if held:
            raise ConfigError(f"preservation.preservation_prompts: {prompt!r} holds the trigger {held[0]!r}; these "
                              "prompts are what the LoRA must leave alone — write other subjects (\"an orange "
                              "square\"), and leave the trigger's own class to diff_output_preservation")
        if not prompt.strip():
            raise ConfigError("preservation.preservation_prompts: an empty prompt; use "
                              "blank_prompt_preservation = true for the empty prompt")
    if log is None:
        return
    if p.diff_output_preservation:
        missing = [item for item in dataset.items if words[item.path].class_prompt(item.caption) is None]
        if missing:
            log(f"warning: {len(missing)} of {len(dataset.items)} captions hold no trigger word "
                f"({', '.join(words[missing[0]].triggers)}), e.g. {missing[0].path.name}: "
                "diff_output_preservation skips them")
    log(cost_line(cfg))


def cost_line(cfg: RunConfig) -> str:
    """What the extra passes cost, as printed before training (`bench/train_speed.py` measures it:
    the estimate counts FLOPs, not the text encoders or the launch overheads of small batches)."""
    p = cfg.preservation
    prompts = [n for n, on in (("class prompt", p.diff_output_preservation),
                               ("blank prompt", p.blank_prompt_preservation),
                               (f"{len(p.preservation_prompts)} preservation prompts in turn",
                                bool(p.preservation_prompts))) if on]
    rows = len(prompts)  # the prompts share the two passes as one batch of that many times the rows
    extra = rows * (1.0 + _STEP_UNITS) / _STEP_UNITS
    return (f"output preservation ({' + '.join(prompts)}): +2 U-Net forward passes per step, one without "
            f"and one with gradients, on {rows}× the batch rows (≈ +{extra * 100:.0f} % step time)")
