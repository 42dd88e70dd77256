"""Tools for existing LoRA files: `lorakiln lora info|convert|resize|extract|merge|ziplora`.

* `files` — reading a LoRA file without loading tensors (`header`, `modules`), the `lora info`
  report (`info`, `metadata_view`), the in-memory kohya file (`lorafile`) and kohya ⇄ diffusers
  `convert`;
* `lowrank` — the low-rank factor type and SVD rank choice every rank-changing tool shares;
* `resize` — `resize` (lower a LoRA's rank) and `extract` (a LoRA from two checkpoints);
* `merge` — LoRAs into one LoRA or into a checkpoint, with weighted-sum/TIES/DARE;
* `ziplora` — ZipLoRA: two LoRAs merged by trained per-column coefficients;
* `command` — the CLI sub-verbs.

The subpackages import downwards only: `lowrank` ← `files` ← `resize` ← `merge`, and `files`,
`lowrank` ← `ziplora`. Nothing is imported in any `__init__`, so `lorakiln --help` (which imports
`command`) stays free of torch.
"""
