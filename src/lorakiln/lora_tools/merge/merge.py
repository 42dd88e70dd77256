"""`lorakiln lora merge`: LoRAs into a base checkpoint, or several LoRAs into one (docs/lora-tools.md).

Three jobs, one command (``--lora FILE[:TE[:UNET]]`` strengths as A1111's ``<lora:name:te:unet>``):

* **into a checkpoint** (``--model BASE``): ``W += Σ wᵢ·ΔWᵢ`` for every module of every input,
  any algorithm the generator applies (`checkpoint`, kohya's ``merge_lora.py`` with
  ``--sd_model``); written as a single ``.safetensors`` or a diffusers folder;
* **into one LoRA** (no ``--model``): exact rank concatenation by default, or an SVD of the
  summed delta to ``--rank`` / ``--dynamic`` (`loras`, kohya's ``svd_merge_lora.py``);
* **TIES / DARE** (``--method ties|dare|dare_ties --density D``): the per-module deltas are
  combined entry by entry (`task`) and then written as either of the above.

The files: `inputs` (specs, reading and checking inputs, per-module ΔW), `options`
(settings, the shared combine step, the metadata record), `task` (TIES/DARE maths),
`loras` and `checkpoint` (the two outputs). This module is the entry point and the
CLI sub-verb; it imports nothing heavy, so registering the verb keeps ``lorakiln --help`` fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.errors import LorakilnError

if TYPE_CHECKING:
    from lorakiln.lora_tools.merge.inputs import LoraSpec
    from lorakiln.lora_tools.merge.options import MergeOptions, MergeResult

#: `task.METHODS`, repeated here so the parser needs no torch import (a test keeps them equal).
METHOD_CHOICES: tuple[str, ...] = ("sum", "ties", "dare", "dare_ties")
_METHOD_NAMES = {"concat": "exact concatenation", "svd": "SVD of the summed deltas", "sum": "addition",
                 "ties": "TIES-Merging", "dare": "DARE", "dare_ties": "DARE + TIES"}


def merge(
    loras: Sequence[str | os.PathLike[str] | LoraSpec],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    to: str | None = None,
    options: MergeOptions | None = None,
) -> MergeResult:
    """Merge `loras` and write `output`.

    Each input is a ``path[:te[:unet]]`` string (the CLI syntax), a path (strength 1) or a `LoraSpec`.

    `to` is ``"checkpoint"`` (the default with `model`) or ``"lora"`` (the default without;
    with `model` the base then only supplies module shapes and key resolution).
    """
    from lorakiln.lora_tools.merge.checkpoint import merge_into_checkpoint
    from lorakiln.lora_tools.merge.inputs import LoraSpec
    from lorakiln.lora_tools.merge.loras import merge_to_lora
    from lorakiln.lora_tools.merge.options import MergeOptions

    specs = [s if isinstance(s, LoraSpec) else LoraSpec(Path(s)) if isinstance(s, os.PathLike) else LoraSpec.parse(s)
             for s in loras]
    if not specs:
        raise LorakilnError("nothing to merge: pass at least one --lora FILE[:STRENGTH]")
    options = options or MergeOptions()
    to = to or ("checkpoint" if model is not None else "lora")
    if to == "checkpoint":
        if model is None:
            raise LorakilnError("--to checkpoint needs --model BASE (the checkpoint to merge the LoRAs into)")
        return merge_into_checkpoint(model, specs, output, options)
    if to != "lora":
        raise LorakilnError(f"unknown --to {to!r}; valid: checkpoint, lora")
    return merge_to_lora(specs, output, options, model)


def describe_result(result: MergeResult) -> str:
    """The CLI report: what went in, how it was merged, what was written."""
    from lorakiln.lora_tools.lowrank.reduction import energy_line, rank_line

    what = {"lora": "kohya LoRA", "checkpoint": "single-file checkpoint", "diffusers": "diffusers folder"}[result.kind]
    lines = [f"wrote {result.path} ({what}, {result.family}) by {_METHOD_NAMES.get(result.method, result.method)}",
             f"  inputs: {', '.join(result.inputs)}"]
    if result.kind == "lora":
        lines.append(f"  {result.modules} modules; {rank_line(result.reports, with_before=result.energy is not None)}; "
                     f"stored as {result.precision}")
    else:
        lines.append(f"  {result.modules} weights changed; stored as {result.precision}")
    if result.energy is not None:
        lines.append(f"  {energy_line(result.reports)}")
        lines.append(f"  the merged file keeps {result.energy:.2%} of the merged change (Σ‖ΔW‖² over all modules)")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)


def add_arguments(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``merge`` under the ``lora`` verb and return its parser.

    `lora_tools.command` adds the rank options (``--rank``, ``--conv-rank``, ``--dynamic``,
    ``--dynamic-param``, ``--save-precision``, ``--device``, ``--force``, ``--verbose``) it shares
    with `resize` and `extract`.
    """
    p = sub.add_parser(
        "merge",
        help="merge LoRAs into a base checkpoint, or several LoRAs into one (exact concat, SVD, TIES, DARE)",
    )
    p.add_argument("output", help="the file or folder to write: a LoRA .safetensors, or with --model a checkpoint "
                                  ".safetensors or a diffusers folder (a path without .safetensors)")
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:S[:UNET]]",
                   help="an input LoRA and its strength, as A1111's <lora:name:te:unet> (default 1; a second "
                        "number sets the U-Net strength apart from the text encoders'); repeat for each file")
    p.add_argument("--model", help="base model to merge into: a single-file .safetensors checkpoint or a diffusers "
                                   "folder (with --to lora it only supplies module shapes)")
    p.add_argument("--to", choices=["checkpoint", "lora"],
                   help="what to write (default: checkpoint with --model, else lora)")
    p.add_argument("--method", choices=METHOD_CHOICES, default="sum",
                   help="how the deltas combine: sum (default: exact), ties, dare, dare_ties")
    p.add_argument("--density", type=float, help="TIES/DARE: the share of each delta's entries kept (0 < d <= 1)")
    p.add_argument("--seed", type=int, help="DARE: seed of the random drop (default 0, so runs repeat)")
    p.add_argument("--family", choices=["sd1", "sdxl"], help="base model family when the LoRA files do not say")
    p.set_defaults(lora_func="run_merge")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``lora merge`` handler: build the options from the arguments, merge, report."""
    from lorakiln.lora_tools.lowrank.reduction import print_module
    from lorakiln.lora_tools.merge.options import MergeOptions, rank_spec

    options = MergeOptions(method=args.method, density=args.density, seed=args.seed,
                           ranks=rank_spec(args.rank, args.conv_rank, args.dynamic, args.dynamic_param),
                           save_precision=args.save_precision, device=args.device, family=args.family,
                           force=args.force, on_module=print_module if args.verbose else None)
    result = merge(args.lora, args.output, model=args.model, to=args.to, options=options)
    print(describe_result(result))
    return 0
