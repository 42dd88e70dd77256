"""Read a kohya-format LoRA as per-module factors and write factors back as one.

The toolbox commands that produce LoRA files (resize, merge, extract, ZipLoRA) share this
module, so every file they write has the same layout as lorakiln's trainer writes: kohya keys
``<module>.lora_down.weight`` / ``.lora_up.weight`` / 0-dim ``.alpha`` (sd-scripts ``networks/lora.py``), the
source's ``ss_*`` / ``modelspec.*`` metadata with dim/alpha describing the written tensors, and
fresh ``sshs_*`` hashes. Reading groups keys the way A1111 does (split at the first ``.``,
as ``networks.py`` ``load_network``) through `lorakiln.networks.apply`, so the toolbox and the generator agree
on what a file contains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from lorakiln.errors import LorakilnError
from lorakiln.io_guard import check_output, write_output
from lorakiln.lora_tools.lowrank.lowrank import LowRank
from lorakiln.models.family import FAMILIES, ModelFamily
from lorakiln.networks.apply import group_file_modules
from lorakiln.networks.export import precalculate_hashes, resolve_save_dtype
from lorakiln.networks.file_checks import read_lora_checked
from lorakiln.networks.file_family import detect_family
from lorakiln.networks.metadata import MODELSPEC_VERSION
from lorakiln.networks.network import NETWORK_MODULE


@dataclass
class KohyaLoRA:
    """A kohya-format file in memory: ``{module key: (algo, {suffix: tensor})}`` + metadata."""

    path: Path
    family: ModelFamily
    modules: dict[str, tuple[str, dict[str, torch.Tensor]]]
    metadata: dict[str, str]

    def lora_factors(self, key: str) -> LowRank:
        """The module's plain LoRA/LoCon factors (alpha missing ⇒ alpha = rank, as kohya)."""
        algo, parts = self.modules[key]
        if algo != "lora" or "lora_mid.weight" in parts:
            raise LorakilnError(f"{self.path.name}: {key} is a {algo} module; only LoRA/LoCon modules have "
                                "up/down factors")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        alpha = parts.get("alpha")
        rank = down.shape[0]
        value = float(alpha) if alpha is not None and float(alpha) != 0 else float(rank)
        if up.dim() == 2 and down.dim() == 4:  # A1111 accepts 2-D up for conv downs
            up = up[:, :, None, None]
        return LowRank(up, down, value, 1.0)


def read_kohya_lora(path: str | Path, family: str | None = None) -> KohyaLoRA:
    """Load `path`; the family comes from the file (metadata, key prefixes) or `family`."""
    path = Path(path)
    if not path.is_file():
        raise LorakilnError(f"{path}: no such LoRA file")
    if path.suffix != ".safetensors":
        raise LorakilnError(f"{path}: LoRA tools read .safetensors files only (pickles can run code)")
    tensors, metadata = read_lora_checked(path)  # structure, NaN/inf, rank layout (file_checks)
    made_for = detect_family(tensors, metadata)[0]
    if family is not None and made_for is not None and family != made_for:
        raise LorakilnError(f"{path.name} is a {made_for} LoRA, not {family}")
    name = family or made_for
    if name is None:
        raise LorakilnError(f"cannot tell whether {path.name} is for SD 1.x or SDXL; pass --family sd1|sdxl")
    if name not in FAMILIES:
        raise LorakilnError(f"unknown family {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    fam = FAMILIES[name]
    return KohyaLoRA(path, fam, group_file_modules(path, tensors, fam), metadata)


def factors_state_dict(
    modules: dict[str, LowRank], dtype: torch.dtype | str | None = None
) -> dict[str, torch.Tensor]:
    """kohya tensors for ``{module key: factors}``; ``alpha`` is 0-dim in the file dtype (as kohya)."""
    dtype = resolve_save_dtype(dtype) or torch.float32
    out: dict[str, torch.Tensor] = {}
    for key in sorted(modules):
        f = modules[key]
        out[f"{key}.lora_down.weight"] = f.down.detach().to(dtype).contiguous()
        out[f"{key}.lora_up.weight"] = f.up.detach().to(dtype).contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(f.alpha), dtype=dtype)
    return out


def kohya_file_metadata(
    source_md: dict[str, str], tensors: dict[str, torch.Tensor], family: ModelFamily, title: str
) -> dict[str, str]:
    """Keep the source's ``ss_*``/``modelspec.*``; make dim/alpha describe the written tensors
    ("Dynamic" when modules differ, as kohya's resize writes); add kohya's minimum keys (A1111
    version detection) and the ``sshs_*`` hashes."""
    md = {k: v for k, v in source_md.items() if k.startswith(("ss_", "modelspec."))}
    downs = [k.removesuffix(".lora_down.weight") for k in tensors if k.endswith(".lora_down.weight")]
    ranks = Counter(tensors[f"{m}.lora_down.weight"].shape[0] for m in downs)
    alphas = Counter(float(tensors[f"{m}.alpha"]) if f"{m}.alpha" in tensors else
                     float(tensors[f"{m}.lora_down.weight"].shape[0]) for m in downs)
    md.setdefault("ss_v2", family.ss_v2)
    md.setdefault("ss_base_model_version", family.base_model_version)
    md.setdefault("ss_network_module", NETWORK_MODULE)
    md.setdefault("ss_network_args", "{}")
    md["ss_network_dim"] = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    md["ss_network_alpha"] = str(next(iter(alphas))) if len(alphas) == 1 else "Dynamic"
    md.setdefault("modelspec.sai_model_spec", MODELSPEC_VERSION)
    md.setdefault("modelspec.architecture", family.modelspec_lora_architecture)
    md.setdefault("modelspec.implementation", family.modelspec_implementation)
    md["modelspec.title"] = title
    md.pop("sshs_model_hash", None)
    md.pop("sshs_legacy_hash", None)
    return md | precalculate_hashes(tensors, md)


def write_kohya_lora(
    path: str | Path,
    modules: dict[str, LowRank],
    family: ModelFamily,
    *,
    source_metadata: dict[str, str] | None = None,
    extra_metadata: dict[str, str] | None = None,
    dtype: torch.dtype | str | None = None,
    force: bool = False,
    inputs: Sequence[str | Path | None] = (),
    verb: str = "lora",
) -> Path:
    """Write ``{module key: factors}`` as a kohya LoRA at `path`, atomically.

    `extra_metadata` (e.g. ``ss_training_comment``, a ``lorakiln_*`` record of the operation)
    overrides the carried-over keys. Refuses to overwrite an existing file unless `force`, and
    never overwrites one of the inputs, whatever `force` says (`io_guard.check_output`; callers
    run the same check before their work, this one guards against the output changing since).
    """
    path = Path(path)
    check_lora_output(path, inputs, verb=verb, force=force)
    if not modules:
        raise LorakilnError(f"{path}: nothing to write (no modules)")
    tensors = factors_state_dict(modules, dtype)
    md = kohya_file_metadata(dict(source_metadata or {}), tensors, family, path.stem)
    md |= dict(extra_metadata or {})
    md |= precalculate_hashes(tensors, md)
    write_output(path, save(tensors, md))
    return path


def check_lora_output(path: str | Path, inputs: Sequence[str | Path | None], *, verb: str, force: bool) -> Path:
    """`io_guard.check_output` for a kohya LoRA file, which must end in ``.safetensors``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LorakilnError(f"{path}: a kohya LoRA file must end in .safetensors (A1111 and ComfyUI list only those)")
    return check_output(path, inputs, verb=verb, force=force)
