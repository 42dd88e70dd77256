"""`lora merge --model BASE`: LoRAs fused into a base checkpoint, ``W += Σ wᵢ·ΔWᵢ``.

Every file is hooked into the loaded base with `apply_lora_file`, the same path generation
takes, so every algorithm the generator applies (LoRA, LoCon, LoHa, LoKr) is fused, with the
generator's key resolution and scale rules; each adapter's ``delta_weight()`` is then added to
its target's weight (combined first by TIES/DARE when asked) and the hooks are removed. The
merged model therefore computes what the base with the LoRAs hooked at those strengths computes.

Order of work, so that mistakes cost nothing: the LoRA files and the base's family are checked
from headers and configs (a family mismatch or an unknown key is an error before the base is
loaded); the base is loaded and every key resolved to a module before any weight changes; the
output is written atomically (single file: `save_bundle_single_file`; diffusers folder:
`save_bundle_diffusers`). Inputs are never overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lorakiln.atomic import write_text_atomic
from lorakiln.errors import LorakilnError, OutputWriteError
from lorakiln.io_guard import check_output
from lorakiln.lora_tools.files.lorafile import KohyaLoRA
from lorakiln.lora_tools.lowrank.reduction import resolve_device
from lorakiln.lora_tools.merge.inputs import LoraSpec, ModelDeltas, read_inputs
from lorakiln.lora_tools.merge.options import (
    RECORD_FILE,
    RECORD_KEY,
    MergeOptions,
    MergeResult,
    merge_record,
    merged_delta,
)
from lorakiln.models.family import FAMILIES, ModelFamily
from lorakiln.networks.export import resolve_save_dtype

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle

#: A merged checkpoint's default storage precision: what shared checkpoints use and UIs run at,
#: half the size of fp32 (`--save-precision float` keeps fp32).
DEFAULT_CHECKPOINT_PRECISION = "fp16"
_PICKLES = (".ckpt", ".pt", ".pth", ".bin")


def peek_family(model: str | os.PathLike[str]) -> ModelFamily | None:
    """The base model's family from its config or tensor names only, or None (hub id, toy).

    Cheap enough to run before the LoRAs are checked: a family mismatch is reported without
    loading gigabytes of weights.
    """
    from lorakiln.models.detect import detect_family, detect_family_from_config

    src = os.fspath(model)
    if src.startswith("tiny:"):
        return FAMILIES.get(src.split(":")[1])
    path = Path(src).expanduser()
    if path.is_dir() and (path / "unet" / "config.json").is_file():
        index = path / "model_index.json"
        pipeline = json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.is_file() else None
        unet_config = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        return detect_family_from_config(unet_config, pipeline_class=pipeline, source=str(path))
    if path.is_file() and path.suffix == ".safetensors":
        from lorakiln.safetensors_check import read_layout

        return detect_family(set(read_layout(path).tensors), source=str(path))  # a damaged file: its error
    return None


def load_base(
    model: str | os.PathLike[str], specs: Sequence[LoraSpec], options: MergeOptions
) -> tuple[ModelBundle, list[KohyaLoRA]]:
    """Check the inputs against the base's family, then load the base (fp32, for exact sums)."""
    from lorakiln.models.loading import load_base_model

    family = peek_family(model)
    name = Path(os.fspath(model)).name
    if family is not None and options.family is not None and options.family != family.name:
        raise LorakilnError(f"--family {options.family} does not match the base model {name}, which is {family.name}")
    loras = read_inputs(specs, options.family, None if family is None else (name, family))
    bundle = load_base_model(model)
    if loras[0].family.name != bundle.family.name:  # a base only known once loaded (hub id)
        raise LorakilnError(f"the LoRAs are for {loras[0].family.name}, but the base model {name} is "
                            f"{bundle.family.name}")
    return bundle, loras


def _check_output(output: Path, model: str | os.PathLike[str], specs: Sequence[LoraSpec], force: bool) -> str:
    """``"checkpoint"`` (single ``.safetensors``) or ``"diffusers"`` (folder); refuse unsafe targets."""
    if output.suffix.lower() in _PICKLES:
        raise LorakilnError(f"{output}: write the merged model as .safetensors (a single file) or a folder "
                            "(diffusers); pickled checkpoints can run code when loaded")
    kind = "checkpoint" if output.suffix.lower() == ".safetensors" else "diffusers"
    if kind == "checkpoint" and output.is_dir():
        raise LorakilnError(f"{output} is a folder; name a .safetensors file, or drop the suffix for a diffusers folder")
    if kind == "diffusers" and output.exists() and not output.is_dir():
        raise LorakilnError(f"{output} is a file; a diffusers model is written as a folder")
    out = output.resolve()
    base = Path(os.fspath(model)).expanduser().resolve()
    if base.exists() and base.is_dir() and out.is_relative_to(base):
        raise LorakilnError(f"{output} is inside the base model's folder; write the merge somewhere new "
                            "(the base model is kept as it is)")
    check_output(output, [model, *(s.path for s in specs)], verb="lora merge", force=force,
                 folder_output=kind == "diffusers")
    return kind


def fuse(bundle: ModelBundle, specs: Sequence[LoraSpec], options: MergeOptions) -> int:
    """Add every module's merged delta to the base weights in place; returns the modules changed."""
    device = resolve_device(options.device)
    source = ModelDeltas(bundle, specs)  # raises for a key without a module before any weight changes
    changed = 0
    try:
        with torch.no_grad():
            for key in tqdm(source.keys, desc="merge", unit="module", leave=False, disable=None):
                delta = merged_delta(source, specs, key, options, device)
                if delta is None:
                    continue
                weight = source.target(key).weight
                weight.add_(delta.to(weight.device, weight.dtype))
                changed += 1
    finally:
        source.close()
    return changed


def merge_into_checkpoint(
    model: str | os.PathLike[str],
    specs: Sequence[LoraSpec],
    output: str | os.PathLike[str],
    options: MergeOptions,
) -> MergeResult:
    """Fuse the `specs` LoRAs into the base `model` and write the merged model to `output`."""
    options.check(to_lora=False)
    resolve_device(options.device)  # a bad --device fails before the base model is loaded
    output = Path(output)
    kind = _check_output(output, model, specs, options.force)
    bundle, loras = load_base(model, specs, options)
    changed = fuse(bundle, specs, options)
    precision = options.save_precision or DEFAULT_CHECKPOINT_PRECISION
    dtype = resolve_save_dtype(precision)
    record = merge_record(specs, loras, options, options.method, base=bundle.name, base_sha256=bundle.sha256,
                          save_precision=precision)
    _save(bundle, output, kind, dtype, record)
    notes = [] if changed else ["no module changed: every input is at strength 0"]
    return MergeResult(path=output, kind=kind, method=options.method, family=bundle.family.name,
                       inputs=[s.label() for s in specs], modules=changed, notes=notes,
                       precision=str(dtype).removeprefix("torch."))


def _save(bundle: ModelBundle, output: Path, kind: str, dtype: torch.dtype | None, record: str) -> None:
    """Write the merged model; a full disk or a read-only folder becomes one `OutputWriteError`
    (the writers are atomic, so nothing that existed before is lost)."""
    try:
        if kind == "checkpoint":
            from lorakiln.models.save import save_bundle_single_file

            save_bundle_single_file(bundle, output, dtype=dtype, metadata={RECORD_KEY: record})
            return
        from lorakiln.models.save import save_bundle_diffusers

        for module in (bundle.unet, bundle.vae, *bundle.text_encoders):
            module.to(dtype)
        save_bundle_diffusers(bundle, output)
        write_text_atomic(output / RECORD_FILE, json.dumps(json.loads(record), indent=2) + "\n")
    except OSError as err:
        if err.errno not in OutputWriteError.ERRNOS:
            raise
        raise OutputWriteError.from_os_error(output, err) from None
