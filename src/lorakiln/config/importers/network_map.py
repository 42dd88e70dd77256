"""The one mapping of kohya / LyCORIS network settings onto lorakiln's `[network]` keys.

Every importer ends here, so a LoCon, LoHa, LoKr or DoRA comes out the same whichever file it
came from, and an adapter lorakiln does not train (iA3, GLoRA, DyLoRA, OFT, ...) is reported
the same way, by name:

* the kohya_ss GUI's `LoRA_type` is first turned into the `network_module` + `network_args`
  the GUI passes to sd-scripts (`GUI_LORA_TYPES`, after the GUI's `lora_gui.py` `train_model`);
* an sd-scripts `--config_file` TOML or command line gives those two options directly;
* `map_network` then reads them: kohya sd-scripts' `networks.lora` (with `conv_dim` it is what
  sd-scripts' docs call LoRA-C3Lier and the GUI "Kohya LoCon": lorakiln's `lora` + `conv_dim`,
  same conv targets, kohya's conv_alpha default of 1) and LyCORIS's `lycoris.kohya` with its
  `algo` argument (LyCORIS `kohya.py` `create_network`; default `lora`, which with LyCORIS's
  default preset "full" adapts the convs too, i.e. lorakiln's `locon`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorakiln.config.importers.draft import Draft

ArgLabel = Callable[[str, str], str]

#: LyCORIS `algo` → lorakiln `network_module` (LyCORIS's "lora" and "locon" are one module,
#: `lycoris/modules/locon.py`). DoRA is LyCORIS's `dora_wd=True` on top of lora/locon.
LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr"}
#: LyCORIS algorithms lorakiln does not train, by the name their users know.
OTHER_ALGOS = {
    "ia3": "iA3 ((IA)³, LyCORIS algo=ia3)", "glora": "GLoRA (LyCORIS algo=glora)",
    "glokr": "GLoKr (LyCORIS algo=glokr)", "dylora": "DyLoRA (LyCORIS algo=dylora)",
    "full": "native fine-tuning (LyCORIS algo=full, a whole weight difference)",
    "diag-oft": "Diag-OFT (LyCORIS algo=diag-oft)", "oft": "OFT (LyCORIS algo=oft)",
    "boft": "BOFT (LyCORIS algo=boft)",
}  # fmt: skip
#: sd-scripts network modules lorakiln does not train (other families are refused earlier).
OTHER_MODULES = {
    "networks.dylora": "DyLoRA (sd-scripts networks.dylora)",
    "networks.lora_fa": "LoRA-FA (sd-scripts networks.lora_fa)",
    "networks.oft": "OFT (sd-scripts networks.oft)",
}
#: kohya's old standalone LoCon module (KohakuBlueleaf/LoCon, before LyCORIS): a LoCon.
_OLD_LOCON = "locon.locon_kohya"
WHAT_WE_TRAIN = ("lorakiln trains LoRA, LoCon, LoHa and LoKr (network.network_module lora, locon, loha, "
                 "lokr) and DoRA (network.dora_wd with lora/locon)")

#: kohya sd-scripts `networks.lora` block/dropout arguments (sd-scripts docs, train_network).
KOHYA_BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                    "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
#: Argument values that mean "off / LyCORIS's default": nothing to import.
_DEFAULTS = {"preset": ("full",), "factor": ("-1",), "train_on_input": ("true",), "block_size": ("1",),
             "unit": ("1",), "wd_on_output": ("false",)}
_OFF = ("", "0", "0.0", "false", "none")
#: LyCORIS arguments lorakiln has no equivalent for, and why.
_LYCORIS_UNSUPPORTED = {
    "rank_dropout": "rank dropout is not supported",
    "module_dropout": "module dropout is not supported",
    "dropout": "LyCORIS's dropout is not mapped; lorakiln's network.network_dropout (lora/locon) is kohya's",
    "use_scalar": "LyCORIS's trainable scalar is not supported",
    "rank_dropout_scale": "rank dropout is not supported",
    "train_norm": "training the normalisation layers is not supported",
    "full_matrix": "LoKr full_matrix is not settable (a dim of at least half a factor's size gives full factors)",
    "constrain": "an OFT option", "rescaled": "an OFT option", "train_on_input": "an iA3 option",
    "block_size": "a DyLoRA option",
}
_KOHYA_BLOCK_REASON = "block weights/dims and rank/module dropout are not supported"
_DORA_AXIS_NOTE = ("LyCORIS's default wd_on_output=True keeps one magnitude per output channel; lorakiln's "
                   "DoRA keeps one per input channel, the axis AUTOMATIC1111 and ComfyUI both apply alike")
#: lorakiln's rank limit (`schema.NetworkConfig.network_dim`).
MAX_DIM = 1024


@dataclass(frozen=True)
class GuiType:
    """What the kohya_ss GUI passes to sd-scripts for one `LoRA_type`."""

    module: str
    algo: str | None = None
    #: GUI fields always passed as `network_args`, as (field, argument name).
    fields: tuple[tuple[str, str], ...] = ()
    #: GUI fields passed only when set (`if value` in the GUI).
    sparse: tuple[str, ...] = ()


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, "preset" if n == "LyCORIS_preset" else n) for n in names)


_LYCORIS_COMMON = _same("LyCORIS_preset", "conv_dim", "conv_alpha", "rank_dropout", "bypass_mode", "dora_wd",
                        "module_dropout", "use_tucker", "use_scalar", "rank_dropout_scale", "train_norm")
_OFT = _same("LyCORIS_preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "use_scalar",
             "rank_dropout_scale", "constrain", "rescaled", "train_norm")
#: kohya_ss GUI `LoRA_type` → what its `train_model` passes (`lora_gui.py`).
GUI_LORA_TYPES: dict[str, GuiType] = {
    "Standard": GuiType("networks.lora", sparse=KOHYA_BLOCK_ARGS),
    "Kohya LoCon": GuiType("networks.lora", fields=_same("conv_dim", "conv_alpha"), sparse=KOHYA_BLOCK_ARGS),
    "LoCon": GuiType("lycoris.kohya", "locon", _LYCORIS_COMMON),
    "LyCORIS/LoCon": GuiType("lycoris.kohya", "locon", _LYCORIS_COMMON),
    "LyCORIS/LoHa": GuiType("lycoris.kohya", "loha", _LYCORIS_COMMON),
    "LyCORIS/LoKr": GuiType("lycoris.kohya", "lokr", _LYCORIS_COMMON + _same("factor", "use_cp", "decompose_both")),
    "LyCORIS/iA3": GuiType("lycoris.kohya", "ia3", _same("LyCORIS_preset", "conv_dim", "conv_alpha", "train_on_input")),
    "LyCORIS/DyLoRA": GuiType("lycoris.kohya", "dylora", _same("LyCORIS_preset", "conv_dim", "conv_alpha", "use_tucker",
                                                               "rank_dropout", "module_dropout", "train_norm")
                              + (("unit", "block_size"),)),
    "LyCORIS/GLoRA": GuiType("lycoris.kohya", "glora", _same("LyCORIS_preset", "conv_dim", "conv_alpha", "rank_dropout",
                                                             "module_dropout", "rank_dropout_scale", "train_norm")),
    "LyCORIS/Diag-OFT": GuiType("lycoris.kohya", "diag-oft", _OFT),
    "LyCORIS/BOFT": GuiType("lycoris.kohya", "boft", _OFT),
    "LyCORIS/Native Fine-Tuning": GuiType("lycoris.kohya", "full", _same(
        "LyCORIS_preset", "rank_dropout", "module_dropout", "rank_dropout_scale", "train_norm")),
    "LoRA-FA": GuiType("networks.lora_fa", sparse=KOHYA_BLOCK_ARGS),
    "Kohya DyLoRA": GuiType("networks.dylora", sparse=("conv_dim", "conv_alpha", "unit", *KOHYA_BLOCK_ARGS)),
}  # fmt: skip


def _clean(raw: object) -> str:
    return str(raw).strip().strip("\"'")


def split_args(value: object) -> list[tuple[str, str]]:
    """`network_args` as (key, value) pairs; sd-scripts splits each item at its first `=`
    (`train_network.py`: `key, value = net_arg.split("=")`), a TOML gives a list, a command line
    one or more words."""
    items = value.split() if isinstance(value, str) else list(value or []) if isinstance(value, list | tuple) else []
    return [(k.strip(), _clean(v)) for k, _, v in (str(i).partition("=") for i in items)]


def adapter_of(module: object, items: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(lorakiln network_module, None) for an adapter lorakiln trains, else (None, its name)."""
    name = _clean(module or "networks.lora")
    if name == "networks.lora":
        return "lora", None
    if name in ("lycoris.kohya", _OLD_LOCON):
        algo = dict((k.lower(), v.lower()) for k, v in items).get("algo", "lora" if name != _OLD_LOCON else "locon")
        if algo in LYCORIS_ALGOS:
            return LYCORIS_ALGOS[algo], None
        return None, OTHER_ALGOS.get(algo, f"LyCORIS algo={algo}")
    return None, OTHER_MODULES.get(name, f"network module {name}")


def _is_default(key: str, raw: str) -> bool:
    return raw.lower() in _OFF or raw.lower() in _DEFAULTS.get(key, ())


def put_dim(draft: Draft, target: str, value: object, origin: str, algo: str | None) -> bool:
    """Set a rank. LyCORIS's LoKr reads a dim at least half a Kronecker factor's size as "use a
    full matrix" (`lycoris/modules/lokr.py`; the kohya_ss LoKr presets write 100000 for that);
    lorakiln's limit is `MAX_DIM`, which keeps that meaning wherever a factor is ≤ 2048."""
    try:
        big = int(float(str(value))) > MAX_DIM
    except ValueError:
        big = False
    if algo == "lokr" and big:
        draft.note(origin, f"a LoKr dim this large means full (not low-rank) Kronecker factors in LyCORIS; lorakiln's "
                   f"limit {MAX_DIM} does the same wherever a factor's larger side is at most {2 * MAX_DIM}")
        return draft.put(target, MAX_DIM, f"{origin} (capped at {MAX_DIM})")
    return draft.put(target, value, origin)


def _unsupported_adapter(draft: Draft, name: str, module_label: str, items: list[tuple[str, str]],
                         arg_label: ArgLabel) -> None:
    draft.skip(module_label, f"lorakiln does not train {name}; {WHAT_WE_TRAIN}")
    draft.header.append(f"Adapter not imported: the source trains {name}, which lorakiln does not train. This "
                        "file trains a plain LoRA in its place (network_module = \"lora\", the source's rank): "
                        "choose lora, locon, loha or lokr and check the rank and learning rates.")
    draft.put("network.network_module", "lora", f"stand-in for {name} (see the header)")
    for key, raw in items:
        if key.lower() == "algo":
            continue
        if _is_default(key.lower(), raw):
            draft.idle(arg_label(key, raw))
        else:
            draft.skip(arg_label(key, raw), f"an option of {name}, which is not imported")


def map_network(draft: Draft, module: object, module_label: str, items: list[tuple[str, str]],
                arg_label: ArgLabel) -> str | None:
    """Set `[network]` from an sd-scripts `network_module` and its `network_args`; returns the
    lorakiln network_module (None when the adapter is not one lorakiln trains)."""
    algo, other = adapter_of(module, items)
    if algo is None:
        _unsupported_adapter(draft, other or "this adapter", module_label, items, arg_label)
        return None
    lycoris = _clean(module or "networks.lora") != "networks.lora"
    what = "kohya LoCon" if not lycoris and any(k.lower() == "conv_dim" and not _is_default("conv_dim", v)
                                                 for k, v in items) else None
    given_algo = dict((k.lower(), v) for k, v in items).get("algo")
    with_algo = lycoris and given_algo and f"algo={given_algo}" not in module_label
    origin = module_label + (f" with algo={given_algo}" if with_algo else "") + (f" ({what})" if what else "")
    draft.put("network.network_module", algo, origin)
    reader = _LycorisArgs(draft, algo, items, arg_label) if lycoris else None
    for key, raw in items:
        if reader is not None:
            reader.one(key, raw)
        else:
            _kohya_arg(draft, key, raw, arg_label(key, raw), what is not None)
    return algo


def _kohya_arg(draft: Draft, key: str, raw: str, label: str, convs: bool) -> None:
    """sd-scripts `networks.lora` arguments: conv_dim/conv_alpha (kohya LoCon), else unsupported."""
    k = key.lower()
    if k in ("conv_dim", "conv_alpha") and not _is_default(k, raw):
        if k == "conv_alpha" and not convs:
            draft.skip(label, "conv_alpha without conv_dim: sd-scripts then adds no conv layers")
        else:
            draft.put(f"network.{k}", raw, label)
    elif _is_default(k, raw):
        draft.idle(label)
    elif k == "dora_wd":
        draft.skip(label, "sd-scripts' networks.lora has no DoRA (LyCORIS's lycoris.kohya has): set "
                   "network.dora_wd = true if you want DoRA")
    else:
        draft.skip(label, _KOHYA_BLOCK_REASON if k in KOHYA_BLOCK_ARGS else "this network argument is not supported")


class _LycorisArgs:
    """`lycoris.kohya` arguments for a lora/locon/loha/lokr algorithm."""

    def __init__(self, draft: Draft, algo: str, items: list[tuple[str, str]], arg_label: ArgLabel) -> None:
        self.d, self.algo, self.label = draft, algo, arg_label
        self.args = {k.lower(): v for k, v in items}

    def one(self, key: str, raw: str) -> None:
        k, label = key.lower(), self.label(key, raw)
        value: object = {"true": True, "false": False}.get(raw.lower(), raw)
        if k == "algo":
            return
        if k in ("conv_dim", "conv_alpha") and raw.lower() not in ("", "none"):
            put_dim(self.d, f"network.{k}", raw, label, self.algo if k == "conv_dim" else None)
        elif k == "bypass_mode":
            self._bypass(raw, label)
        elif k == "wd_on_output":
            if self.args.get("dora_wd", "").lower() == "true" and raw.lower() != "false":
                self.d.note(label, _DORA_AXIS_NOTE)
            else:
                self.d.idle(label)
        elif _is_default(k, raw):
            self.d.idle(label)
        elif k == "preset":
            self.d.skip(label, "LyCORIS presets other than \"full\" are not supported; lorakiln adapts kohya's "
                        "LoCon targets (attention, ResNet and up/down-sampler layers)")
        elif k in ("use_tucker", "use_cp", "use_conv_cp"):
            self._only(label, ("loha", "lokr"), "network.use_tucker", value, "lorakiln's LoRA/LoCon has no Tucker mid layer")
        elif k in ("factor", "decompose_both"):
            target = "network.lokr_factor" if k == "factor" else "network.lokr_decompose_both"
            self._only(label, ("lokr",), target, value, "a LoKr option")
        elif k == "dora_wd":
            self._dora(label)
        else:
            self.d.skip(label, _LYCORIS_UNSUPPORTED.get(k, "this LyCORIS argument is not supported"))

    def _only(self, label: str, algos: tuple[str, ...], target: str, value: object, why: str) -> None:
        if self.algo in algos:
            self.d.put(target, value, label)
        else:
            self.d.skip(label, f"{why}; network_module is {self.algo}")

    def _bypass(self, raw: str, label: str) -> None:
        if raw.lower() == "true":
            self.d.note(label, "LyCORIS's bypass mode only changes how the update is computed (for quantised "
                        "base weights); lorakiln trains the same weights its ordinary way")
        else:
            self.d.idle(label)

    def _dora(self, label: str) -> None:
        """`dora_wd=True` (LyCORIS): lorakiln trains it with LoRA/LoCon, on the input axis."""
        if self.algo not in ("lora", "locon"):
            self.d.skip(label, f"lorakiln trains DoRA with LoRA/LoCon only, not {self.algo}; the import trains "
                        f"{self.algo} without weight decomposition")
            return
        if self.d.put("network.dora_wd", True, label) and "wd_on_output" not in self.args:
            self.d.note(label, _DORA_AXIS_NOTE)
