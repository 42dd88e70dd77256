"""What a `lora merge` run was asked to do, the one step every output shares, and what it did.

`MergeOptions` holds the method and output settings and refuses combinations that make no sense
(``--density`` without TIES/DARE, ``--rank`` for a checkpoint...) before any file is read.
`merged_delta` is the step the LoRA and checkpoint writers share: one module's weighted deltas
``wᵢ·ΔWᵢ`` combined by the chosen method (`task`). `merge_record` is the ``lorakiln_merge``
metadata entry that says which files went in at which strengths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lorakiln import __version__
from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import KohyaLoRA
from lorakiln.lora_tools.lowrank.reduction import ModuleReport, OnModule, RankSpec, make_rank_spec
from lorakiln.lora_tools.merge.inputs import LoraSpec
from lorakiln.lora_tools.merge.task import METHODS, SPARSE_METHODS, combine, module_generator
from lorakiln.networks.export import addnet_model_hash

#: safetensors metadata key of the merge record (LoRA files and single-file checkpoints); the
#: diffusers-folder output writes the same JSON as `RECORD_FILE` in the folder.
RECORD_KEY = "lorakiln_merge"
RECORD_FILE = "lorakiln_merge.json"
PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "float")


@dataclass(frozen=True)
class MergeOptions:
    """Settings of one merge; `check` validates them against the output kind.

    ``ranks`` (the shared `reduction.RankSpec` of ``--rank``/``--conv-rank``/``--dynamic``, as
    `lora resize` and `lora extract` read them) makes a LoRA output go through SVD; None keeps the
    exact concatenation.
    """

    method: str = "sum"
    density: float | None = None
    seed: int | None = None
    ranks: RankSpec | None = None
    save_precision: str | None = None
    device: str | None = None
    family: str | None = None
    force: bool = False
    on_module: OnModule | None = None

    @property
    def dare_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def check(self, to_lora: bool) -> None:
        """Raise `LorakilnError` for options that do not fit together or with the output."""
        if self.method not in METHODS:
            raise LorakilnError(f"unknown --method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.method in SPARSE_METHODS:
            if self.density is None:
                raise LorakilnError(f"--method {self.method} needs --density (the share of each delta kept, "
                                    "0 < d <= 1; TIES-Merging keeps 0.2, DARE works with 0.1–0.5)")
            if not 0 < self.density <= 1:
                raise LorakilnError(f"--density must be in (0, 1], got {self.density:g}")
        elif self.density is not None:
            raise LorakilnError("--density applies to --method ties, dare and dare_ties only")
        if self.seed is not None and not self.method.startswith("dare"):
            raise LorakilnError("--seed sets DARE's random drop; it applies to --method dare and dare_ties only")
        if self.save_precision is not None and self.save_precision not in PRECISIONS:
            raise LorakilnError(f"unknown --save-precision {self.save_precision!r}; valid: {', '.join(PRECISIONS)}")
        if not to_lora and self.ranks is not None:
            raise LorakilnError("--rank, --conv-rank and --dynamic shape a LoRA output; a merged checkpoint "
                                "takes the full deltas (add --to lora to write a LoRA instead)")
        if to_lora and self.method != "sum" and self.ranks is None:
            raise LorakilnError(f"--method {self.method} makes full deltas; pass --rank N (or --dynamic METHOD "
                                "--dynamic-param X) to factorise them back into a LoRA, or --model BASE to merge "
                                "into a checkpoint")


def rank_spec(
    rank: int | None, conv_rank: int | None, dynamic: str | None, dynamic_param: float | None
) -> RankSpec | None:
    """The SVD settings, or None when no rank option is given (exact concatenation).

    ``conv_rank`` defaults to ``rank``, as kohya's ``svd_merge_lora.py --new_conv_rank`` (and
    `lora resize`) do; the option rules themselves are `reduction.make_rank_spec`'s.
    """
    if rank is None and conv_rank is None and dynamic is None and dynamic_param is None:
        return None
    return make_rank_spec(rank, conv_rank if conv_rank is not None else rank, dynamic, dynamic_param)


class DeltaSource(Protocol):
    """`inputs.FileDeltas` or `ModelDeltas`: which inputs have a module, and their ΔW."""

    owners: dict[str, list[int]]
    keys: list[str]

    def delta(self, index: int, key: str) -> torch.Tensor: ...


def merged_delta(
    source: DeltaSource, specs: Sequence[LoraSpec], key: str, options: MergeOptions, device: torch.device
) -> torch.Tensor | None:
    """Module `key`'s merged delta on `device`, or None when every strength there is 0.

    Inputs at strength 0 for this part (te or U-Net) are left out altogether, so they neither
    vote in TIES's sign election nor count in its mean.
    """
    pairs = [(i, specs[i].strength(key)) for i in source.owners[key]]
    pairs = [(i, w) for i, w in pairs if w != 0]
    if not pairs:
        return None
    deltas = [source.delta(i, key).to(device) * w for i, w in pairs]
    dare = options.method.startswith("dare")
    generators = [module_generator(options.dare_seed, i, key) for i, _ in pairs] if dare else []
    with torch.no_grad():
        return combine(options.method, deltas, density=options.density, generators=generators)


def _file_hash(lora: KohyaLoRA) -> str:
    """The file's ``sshs_model_hash`` (what A1111 shows as the LoRA's hash), computed if absent."""
    return lora.metadata.get("sshs_model_hash") or addnet_model_hash(lora.path.read_bytes())


def merge_record(
    specs: Sequence[LoraSpec], loras: Sequence[KohyaLoRA], options: MergeOptions, method: str, **extra: Any
) -> str:
    """The JSON merge record: inputs (file, hash, strengths), method and its settings."""
    record: dict[str, Any] = {
        "tool": f"lorakiln {__version__} lora merge",
        "method": method,
        "loras": [{"file": s.path.name, "sshs_model_hash": _file_hash(lora), "te": s.te, "unet": s.unet}
                  for s, lora in zip(specs, loras, strict=True)],
    }
    if options.method in SPARSE_METHODS:
        record["density"] = options.density
    if options.method.startswith("dare"):
        record["seed"] = options.dare_seed
    record.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(record, sort_keys=True)


@dataclass
class MergeResult:
    """What `lora merge` wrote, for the CLI report and for callers."""

    path: Path
    kind: str  # "lora", "checkpoint" (single file) or "diffusers" (folder)
    method: str  # "concat", "svd", "sum" (into a checkpoint), "ties", "dare", "dare_ties"
    family: str
    inputs: list[str]
    modules: int
    #: LoRA output: per module, rank before (concatenated or full) → written, and kept energy.
    reports: list[ModuleReport] = field(default_factory=list)
    #: SVD: the kept share of Σ‖ΔW‖² over all modules (each module weighted by its size).
    energy: float | None = None
    precision: str = ""  # storage dtype of the written tensors, e.g. "float16"
    notes: list[str] = field(default_factory=list)
