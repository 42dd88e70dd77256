"""One network mapping for every importer: the same adapter from a kohya_ss GUI config, an
sd-scripts `--config_file` TOML or an sd-scripts command line gives the same `[network]`.

The GUI side is the `LoRA_type` plus the form's knobs (as kohya_ss "Save config" writes them);
the GUI passes them to sd-scripts as `network_module` + `network_args` (its `lora_gui.py`), which
is what the other two spell out.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lorakiln.config.importers import ImportResult, import_config
from lorakiln.config.load import build_config

SEED000 = json.loads((Path(__file__).parent / "fixtures" / "kohya_gui_seed000.json").read_text())
COMMON = {"pretrained_model_name_or_path": "sd15.safetensors", "train_data_dir": "train", "network_dim": 16,
          "network_alpha": 8}


def _gui(lora_type: str, **knobs: Any) -> str:
    return json.dumps({**SEED000, **COMMON, "LoRA_type": lora_type, **knobs})


def _toml(module: str, args: list[str]) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in COMMON.items()]
    return "\n".join([*lines, f'network_module = "{module}"', f"network_args = {json.dumps(args)}"]) + "\n"


def _command(module: str, args: list[str]) -> str:
    flags = " ".join(f"--{k}={v}" for k, v in COMMON.items())
    return (f"accelerate launch train_network.py {flags} --network_module={module} "
            f"--network_args {' '.join(json.dumps(a) for a in args)}")


def _import(text: str, tmp_path: Path) -> ImportResult:
    return import_config(text, base_dir=tmp_path)


def _network(result: ImportResult, tmp_path: Path) -> dict[str, Any]:
    assert result.problem is None, result.problem
    return build_config(tomllib.loads(result.text), base_dir=tmp_path).network.model_dump()


ADAPTERS = {
    "LoCon": (("LyCORIS/LoCon", {"conv_dim": 8, "conv_alpha": 4}),
              ("lycoris.kohya", ["algo=locon", "conv_dim=8", "conv_alpha=4"]),
              {"network_module": "locon", "conv_dim": 8, "conv_alpha": 4}),
    "LoHa": (("LyCORIS/LoHa", {"conv_dim": 8, "conv_alpha": 4, "use_tucker": True}),
             ("lycoris.kohya", ["algo=loha", "conv_dim=8", "conv_alpha=4", "use_cp=True"]),
             {"network_module": "loha", "use_tucker": True}),
    "LoKr": (("LyCORIS/LoKr", {"conv_dim": 8, "conv_alpha": 4, "factor": 8, "decompose_both": True}),
             ("lycoris.kohya", ["algo=lokr", "conv_dim=8", "conv_alpha=4", "factor=8", "decompose_both=True"]),
             {"network_module": "lokr", "lokr_factor": 8, "lokr_decompose_both": True}),
    "DoRA": (("LyCORIS/LoCon", {"conv_dim": 8, "conv_alpha": 4, "dora_wd": True}),
             ("lycoris.kohya", ["algo=lora", "conv_dim=8", "conv_alpha=4", "dora_wd=True"]),
             {"network_module": "locon", "dora_wd": True}),
    "kohya LoCon": (("Kohya LoCon", {"conv_dim": 4, "conv_alpha": 1}),
                    ("networks.lora", ["conv_dim=4", "conv_alpha=1"]),
                    {"network_module": "lora", "conv_dim": 4, "conv_alpha": 1}),
}


@pytest.mark.parametrize("name", ADAPTERS)
def test_same_adapter_from_every_format(name: str, tmp_path: Path) -> None:
    (lora_type, knobs), (module, args), expected = ADAPTERS[name]
    results = {"gui": _import(_gui(lora_type, **knobs), tmp_path), "toml": _import(_toml(module, args), tmp_path),
               "command": _import(_command(module, args), tmp_path)}
    networks = {fmt: _network(r, tmp_path) for fmt, r in results.items()}
    assert networks["gui"] == networks["toml"] == networks["command"], networks
    for key, value in expected.items():
        assert networks["gui"][key] == value, (key, networks["gui"][key])
    assert (networks["gui"]["network_dim"], networks["gui"]["network_alpha"]) == (16, 8)
    for result in results.values():
        assert not any("network" in e.option or "conv" in e.option for e in result.draft.unmapped), result.draft.unmapped


@pytest.mark.parametrize(("lora_type", "algo", "name"), [
    ("LyCORIS/iA3", "ia3", "iA3"), ("LyCORIS/GLoRA", "glora", "GLoRA"), ("LyCORIS/DyLoRA", "dylora", "DyLoRA"),
    ("LyCORIS/Diag-OFT", "diag-oft", "Diag-OFT"), ("LyCORIS/Native Fine-Tuning", "full", "native fine-tuning"),
])
def test_adapters_lorakiln_does_not_train_are_reported_alike(lora_type: str, algo: str, name: str,
                                                             tmp_path: Path) -> None:
    for text in (_gui(lora_type, conv_dim=8), _toml("lycoris.kohya", [f"algo={algo}", "conv_dim=8"]),
                 _command("lycoris.kohya", [f"algo={algo}", "conv_dim=8"])):
        result = _import(text, tmp_path)
        net = _network(result, tmp_path)
        assert (net["network_module"], net["conv_dim"]) == ("lora", None)  # the stand-in, without iA3's knobs
        reasons = [e.reason for e in result.draft.unmapped if "network_module" in e.option or "LoRA_type" in e.option]
        assert len(reasons) == 1 and f"lorakiln does not train {name}" in reasons[0], result.draft.unmapped
        assert "LoCon, LoHa and LoKr" in reasons[0] and "is not supported" not in reasons[0]
        assert any(f"Adapter not imported: the source trains {name}" in h for h in result.draft.header)
        knob = [e for e in result.draft.unmapped + result.draft.notes
                if e.option.endswith("conv_dim=8") or e.option == "conv_dim = 8"]
        assert len(knob) == 1  # named, as that adapter's option (or one the GUI does not pass for it)


def test_kohya_modules_lorakiln_does_not_train(tmp_path: Path) -> None:
    for module, name in (("networks.dylora", "DyLoRA"), ("networks.lora_fa", "LoRA-FA"), ("networks.oft", "OFT")):
        result = _import(_toml(module, ["unit=4"]), tmp_path)
        assert _network(result, tmp_path)["network_module"] == "lora"
        assert any(f"does not train {name}" in e.reason for e in result.draft.unmapped)


def test_lycoris_knobs_at_their_defaults_say_nothing(tmp_path: Path) -> None:
    """The GUI passes every LyCORIS knob (rank_dropout=0, use_scalar=False, preset=full ...)."""
    result = _import(_gui("LyCORIS/LoKr", conv_dim=8, conv_alpha=4, rank_dropout=0, use_scalar=False,
                          bypass_mode=False, train_norm=False, LyCORIS_preset="full"), tmp_path)
    _network(result, tmp_path)
    assert result.draft.unmapped == [], result.draft.unmapped
    assert {"rank_dropout = 0", 'LyCORIS_preset = "full"', "use_scalar = false"} <= set(result.draft.inactive)


def test_lycoris_knobs_lorakiln_lacks_are_named(tmp_path: Path) -> None:
    result = _import(_toml("lycoris.kohya", ["algo=locon", "preset=attn-only", "rank_dropout=0.1",
                                            "use_tucker=True", "factor=4", "use_scalar=True"]), tmp_path)
    net = _network(result, tmp_path)
    assert (net["network_module"], net["use_tucker"], net["lokr_factor"]) == ("locon", False, -1)
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "presets other than" in unmapped["network_args: preset=attn-only"]
    assert "rank dropout" in unmapped["network_args: rank_dropout=0.1"]
    assert "no Tucker" in unmapped["network_args: use_tucker=True"]
    assert "a LoKr option" in unmapped["network_args: factor=4"]
    assert "scalar" in unmapped["network_args: use_scalar=True"]


def test_lokr_full_matrix_dim_is_capped_with_its_meaning(tmp_path: Path) -> None:
    """The kohya_ss LoKr presets write dim 100000 for LyCORIS's "full matrix"."""
    result = _import(_toml("lycoris.kohya", ["algo=lokr", "conv_dim=100000", "factor=8"]).replace(
        "network_dim = 16", "network_dim = 100000"), tmp_path)
    net = _network(result, tmp_path)
    assert (net["network_dim"], net["conv_dim"]) == (1024, 1024)
    assert sum("full (not low-rank) Kronecker factors" in e.reason for e in result.draft.notes) == 2
    loha = _import(_toml("lycoris.kohya", ["algo=loha"]).replace("network_dim = 16", "network_dim = 100000"),
                   tmp_path)
    assert any("network_dim" in e.option for e in loha.draft.unmapped)  # only LoKr has that meaning


def test_kohya_networks_lora_without_conv_dim_ignores_conv_alpha(tmp_path: Path) -> None:
    result = _import(_toml("networks.lora", ["conv_alpha=4", "down_lr_weight=0,0,1"]), tmp_path)
    net = _network(result, tmp_path)
    assert (net["network_module"], net["conv_dim"], net["conv_alpha"]) == ("lora", None, None)
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "adds no conv layers" in unmapped["network_args: conv_alpha=4"]
    assert "block weights" in unmapped["network_args: down_lr_weight=0,0,1"]
