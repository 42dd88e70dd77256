"""`network.network_weights` against the network a config builds, read from the file's header.

kohya's ``--network_weights`` loads a file non-strictly and says little; its ``--dim_from_weights``
builds the network from the file (sd-scripts ``create_network_from_weights``: one module per
``lora_down`` in the file, at that tensor's rank), which is how an attention-only file from the
diffusers scripts is continued. lorakiln does both, and checks the pairing before any model is
loaded: a file whose ranks, layers or text encoders the config's network cannot hold is an error
that says which setting to change; a file with fewer layers than the network is a warning (the
rest start fresh). Only the safetensors header is read; no torch (the dry run runs this).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakiln.models.names.kohya import KOHYA_FILE_PREFIXES
from lorakiln.networks.targets import PRESET_ROLES, layer_role, preset_of
from lorakiln.safetensors_check import read_layout

_LYCORIS_PARTS = {"hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr"}


@dataclass(frozen=True)
class FileModules:
    """The modules of a kohya-format LoRA file: rank per module (None for LoHa/LoKr), kernel size."""

    path: Path
    ranks: dict[str, int | None]
    convs: frozenset[str]  # modules whose lora_down is a k×k conv (k > 1)
    algo: str

    @property
    def preset(self) -> str:
        return preset_of(self.ranks)

    @property
    def trains_text_encoder(self) -> bool:
        return any(not k.startswith("lora_unet_") for k in self.ranks)

    def linear_ranks(self) -> set[int]:
        return {r for k, r in self.ranks.items() if r is not None and k not in self.convs}

    def conv_ranks(self) -> set[int]:
        return {r for k, r in self.ranks.items() if r is not None and k in self.convs}

    def main_rank(self) -> int | None:
        """The commonest rank of the file's Linear/1×1 modules (its ``network_dim``)."""
        counts = Counter(r for k, r in self.ranks.items() if r is not None and k not in self.convs)
        return counts.most_common(1)[0][0] if counts else None


def read_file_modules(path: str | Path) -> FileModules:
    """The modules of `path` from its header; `FileFormatError` for a damaged file."""
    layout = read_layout(path)
    ranks: dict[str, int | None] = {}
    convs: set[str] = set()
    algos: set[str] = set()
    for name, span in layout.tensors.items():
        if not name.startswith(KOHYA_FILE_PREFIXES):
            continue
        module, _, param = name.partition(".")
        ranks.setdefault(module, None)
        if param == "lora_down.weight" and span.shape:
            ranks[module] = span.shape[0]
            algos.add("lora")
            if len(span.shape) == 4 and tuple(span.shape[2:]) != (1, 1):
                convs.add(module)
        elif param in _LYCORIS_PARTS:
            algos.add(_LYCORIS_PARTS[param])
    algo = "+".join(sorted(algos)) or "unknown"
    return FileModules(Path(path), ranks, frozenset(convs), algo)


def check_network_weights(net: Any) -> list[tuple[str, str]]:
    """``(severity, message)`` findings for `net.network_weights` against `net` (the config's
    ``[network]`` section, `config.network_schema.NetworkConfig`: not imported, as the config layer
    sits above this one); [] when they fit."""
    assert net.network_weights
    file = read_file_modules(Path(net.network_weights).expanduser())
    name = file.path.name
    if not file.ranks:
        return [("error", f"{name} has no kohya-format LoRA modules (lora_unet_…/lora_te_…); convert it with "
                          f"`lorakiln lora convert {name} --to kohya` first")]
    wants = "lora" if net.network_module in ("lora", "locon") else net.network_module
    if file.algo != wants:
        return [("error", f"{name} holds {file.algo} modules but network.network_module is "
                          f"{net.network_module!r}; set it to the file's algorithm")]
    if file.trains_text_encoder and net.network_train_unet_only:
        return [("error", f"{name} has text-encoder modules (lora_te…) and network_train_unet_only = true "
                          "would drop them; set network_train_unet_only = false to continue them")]
    if net.dim_from_weights:
        return []
    out: list[tuple[str, str]] = []
    linear, conv = file.linear_ranks(), file.conv_ranks()
    if linear and linear != {net.network_dim}:
        out.append(("error", f"{name} has rank {_ranks(linear)} but network.network_dim is {net.network_dim}; "
                             "set network_dim to the file's rank, or dim_from_weights = true (kohya's "
                             "--dim_from_weights) to build the network from the file"))
    conv_dim = net.conv_dim or net.network_dim
    if conv and conv != {conv_dim}:
        out.append(("error", f"{name} has conv rank {_ranks(conv)} but the network's conv_dim is {conv_dim}; "
                             "set network.conv_dim to it, or dim_from_weights = true"))
    roles = set(PRESET_ROLES[net.target_modules])
    if net.target_modules == "kohya" and (net.conv_dim is not None or net.network_module != "lora"):
        roles.add("conv")
    file_roles = {layer_role(k) for k in file.ranks}
    extra = sorted(file_roles - roles)
    if extra:
        out.append(("error", f"{name} adapts {', '.join(extra)} layers (its set is {file.preset!r}) that "
                             f"network.target_modules = {net.target_modules!r} leaves out; set target_modules to "
                             f"{file.preset!r}, or dim_from_weights = true to train exactly the file's modules"))
    elif file_roles < roles:
        out.append(("warning", f"{name} has {len(file.ranks)} modules ({file.preset!r} layers); the "
                               f"{net.target_modules!r} network also adapts {', '.join(sorted(roles - file_roles))} "
                               "layers, which start fresh. To continue the file's layers only, set "
                               "network.dim_from_weights = true (kohya's --dim_from_weights)"))
    return out


def _ranks(values: set[int]) -> str:
    return "/".join(str(v) for v in sorted(values))
