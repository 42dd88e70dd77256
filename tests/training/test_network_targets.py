"""Training with `network.target_modules`, `network_weights` partial loads and `dim_from_weights`.

kohya's attention-only trick — continue a diffusers-script LoRA (attention projections only) with
`--network_weights` + `--dim_from_weights` — must work, and the pairing of a file with a config must
be checked before any model loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakiln.errors import ConfigError
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network
from lorakiln.networks.targets import TargetRule
from lorakiln.networks.weights_plan import check_network_weights, read_file_modules
from lorakiln.training.loop import train
from lorakiln.training.preflight import preflight


def _file(tmp_path: Path, preset: str, dim: int, name: str, **kwargs) -> Path:
    """A kohya file with random up weights over the tiny SD1 model's `preset` layers."""
    parts = build_tiny_sd1(tmp_path / f"tok-{name}", seed=0)
    net = create_lora_network(parts.unet, [parts.text_encoder], SD1, dim=dim, alpha=dim,
                              targets=TargetRule(preset), **kwargs)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, module in net.loras():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=gen) * 0.01)
    net.remove()
    return save_kohya_lora(net, tmp_path / f"{name}.safetensors",
                           build_metadata(TrainingInfo(output_name=name), net), dtype="float")


def test_attn_preset_trains_an_attention_only_file(run_config) -> None:
    result = train(run_config(train__max_train_steps=1, network__target_modules="attn"), progress=False)
    file = read_file_modules(result.lora_path)
    assert file.preset == "attn" and len(file.ranks) == 128 + 48


def test_dim_from_weights_continues_an_attention_only_file(run_config, tmp_path: Path, capsys) -> None:
    start = _file(tmp_path, "attn", 8, "diffusers-like")
    cfg = run_config(train__max_train_steps=1, output__save_precision="float", network__network_dim=32,
                     network__network_weights=str(start), network__dim_from_weights=True,
                     train__unet_lr=1e-12, train__text_encoder_lr=1e-12)
    result = train(cfg, progress=False)
    before, after = load_file(str(start)), load_file(str(result.lora_path))
    assert set(after) == set(before)  # exactly the file's 176 modules, not kohya's 264
    for key, tensor in before.items():  # rank 8 from the file (network_dim 32 ignored), weights kept
        torch.testing.assert_close(after[key], tensor, atol=1e-6, rtol=0)


def test_attention_file_into_the_kohya_preset_loads_part_and_says_so(run_config, tmp_path: Path, capsys) -> None:
    from lorakiln.training.prepare import prepare

    start = _file(tmp_path, "attn", 4, "attn4")
    cfg = run_config(network__network_weights=str(start))  # network_dim 4, kohya preset
    findings = preflight(cfg, log=print)
    assert [f.severity for f in findings] == ["warning"]
    ctx = prepare(cfg, log=print)
    out = capsys.readouterr().out
    assert "attn4.safetensors has 176 modules ('attn' layers)" in out and "dim_from_weights" in out
    assert "loaded 176 of 264 modules from attn4.safetensors; 88 are not in the file and start fresh" in out
    given = load_file(str(start))
    state = ctx.network.state_dict()
    for key, tensor in given.items():
        torch.testing.assert_close(state[key], tensor)
    fresh = [k for k in state if k.endswith("proj_in.lora_up.weight")]
    assert fresh and all(state[k].abs().max() == 0 for k in fresh)  # the usual zero-up init


@pytest.mark.parametrize(("file_args", "overrides", "message"), [
    (("attn", 4), {"network__network_dim": 8},
     r"has rank 4 but network.network_dim is 8; set network_dim to the file's rank, or dim_from_weights"),
    (("full", 4), {"network__target_modules": "attn"},
     r"adapts conv, mlp, proj layers \(its set is 'full'\) that network.target_modules = 'attn' leaves out"),
    (("kohya", 4), {"network__network_train_unet_only": True}, r"has text-encoder modules"),
])
def test_mismatched_files_are_refused_before_the_model_loads(run_config, tmp_path: Path, file_args,
                                                             overrides, message) -> None:
    start = _file(tmp_path, *file_args, "given")
    cfg = run_config(network__network_weights=str(start), **overrides)
    assert "torch" in sys.modules  # (the check itself reads the header only: see the dry-run test)
    with pytest.raises(ConfigError, match=message):
        preflight(cfg, log=None)


def test_dim_from_weights_needs_a_file_and_plain_lora(run_config) -> None:
    with pytest.raises(ConfigError, match="dim_from_weights reads the ranks from network.network_weights"):
        run_config(network__dim_from_weights=True)
    with pytest.raises(ConfigError, match="conv_dim adapts the U-Net's ResNet convs, which"):
        run_config(network__target_modules="attn", network__conv_dim=4)
    for slow in ("(a+)+$", "(.*)*x", "x" * 201):  # catastrophic backtracking: refused, as UI input
        with pytest.raises(ConfigError, match="nested repetition"):
            run_config(network__target_exclude=[slow])
    with pytest.raises(ConfigError, match="is not a regular expression"):
        run_config(network__target_include=["attn[2"])


def test_check_network_weights_reads_the_header_only(tmp_path: Path) -> None:
    from lorakiln.config.network_schema import NetworkConfig

    start = _file(tmp_path, "attn", 4, "a")
    net = NetworkConfig(network_dim=4, network_weights=str(start), target_modules="attn")
    assert check_network_weights(net) == []
    net = NetworkConfig(network_dim=16, network_weights=str(start), dim_from_weights=True)
    assert check_network_weights(net) == []
