"""The options a network passes to its adapters and the ``ss_network_args`` it records.

Kept apart from `lorakiln.networks.network` so the option rules (which algorithm takes which
LyCORIS option, and how kohya writes them into a file) read on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def adapter_opts(
    algo: str, use_tucker: bool, lokr_factor: int, lokr_decompose_both: bool, dora_wd: bool = False
) -> dict[str, Any]:
    """Module keyword options for ``algo``; an option the algorithm lacks is an error, not a no-op."""
    if dora_wd and algo not in ("lora", "locon"):
        raise ValueError(f"DoRA (dora_wd) is trained with lora/locon, not with {algo}")
    if algo in ("lora", "locon"):
        if use_tucker or lokr_factor != -1 or lokr_decompose_both:
            raise ValueError(f"use_tucker / lokr_factor / lokr_decompose_both do not apply to {algo}")
        return {"dora_wd": True} if dora_wd else {}
    if algo == "loha":
        if lokr_factor != -1 or lokr_decompose_both:
            raise ValueError("lokr_factor / lokr_decompose_both are LoKr options, not LoHa ones")
        return {"use_tucker": use_tucker}
    return {"use_tucker": use_tucker, "factor": lokr_factor, "decompose_both": lokr_decompose_both}


def _fmt(value: float) -> str:
    """A number as a user types it in ``network_args`` (``8``, ``0.5``), as kohya records them."""
    return f"{value:g}"


def network_args(
    algo: str, conv_dim: int | None, conv_alpha: float | None, opts: Mapping[str, Any]
) -> dict[str, str]:
    """``ss_network_args`` as kohya's ``train_network.py`` writes them: the ``--network_args``
    ``key=value`` strings as a JSON object of strings (as sd-scripts records them, e.g.
    ``{"conv_dim": "8", "conv_alpha": "4"}``). LoHa/LoKr add LyCORIS's ``algo`` and its option
    names (``lycoris/kohya.py`` ``create_network``: ``algo``, ``factor``, ``decompose_both``,
    ``use_tucker``), so the file says how to train it again with ``lycoris.kohya``.

    DoRA adds ``dora_wd`` and ``wd_on_output = "False"`` (LyCORIS defaults to the output axis;
    lorakiln trains the input axis, `lorakiln.networks.dora`), with ``algo`` ``lora``/``locon``;
    without conv targets also ``preset = "attn-mlp"``, LyCORIS's preset for kohya's default
    targets (its default "full" would add the convs)."""
    args: dict[str, str] = {}
    dora = bool(opts.get("dora_wd"))
    if algo in ("loha", "lokr") or dora:
        args["algo"] = algo
    if dora and conv_dim is None:
        args["preset"] = "attn-mlp"
    if conv_dim is not None:
        args["conv_dim"] = str(conv_dim)
        args["conv_alpha"] = _fmt(float(conv_alpha if conv_alpha is not None else conv_dim))
    if algo == "lokr":
        args["factor"] = str(int(opts["factor"]))
        if opts["decompose_both"]:
            args["decompose_both"] = "True"
    if opts.get("use_tucker"):
        args["use_tucker"] = "True"
    if dora:
        args["dora_wd"] = "True"
        args["wd_on_output"] = "False"
    return args
