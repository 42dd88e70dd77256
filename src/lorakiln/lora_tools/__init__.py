"""Tools for existing LoRA files: `lorakiln lora info` and `lorakiln lora convert`.

* `inspect` — `inspect_lora(path) -> LoraInfo` (format, family, per-block ranks/alphas, ``ss_*``
  training metadata, likely trigger words, hashes) and `format_info` for the text report;
* `convert` — `convert_lora(src, dst, "kohya" | "diffusers")`, kohya ⇄ diffusers/PEFT with the
  applied weight delta unchanged;
* `command` — the CLI sub-verbs.

Nothing is imported here, so `lorakiln --help` (which imports `command`) stays free of torch.
"""
