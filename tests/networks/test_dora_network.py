"""DoRA (``dora_wd``) networks on tiny SD1: training, the file, resume, generation, config.

A fresh network is an exact no-op; three Adam steps move ``dora_scale``; the file has
``dora_scale`` ``[1, in(, 1, 1)]`` on real modules, LyCORIS metadata, resumes exactly; generation
at strength 1/0.5 equals the fused reference weights (LyCORIS ``apply_dora_scale``) and strength 0
is the base. Then config checks, the sd-scripts importer, the diffusers refusal and ``lora info``
notes. The module maths against LyCORIS are in `test_dora.py`.
"""


from __future__ import annotations

import copy
import json
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lycoris", reason="the LyCORIS oracle needs `pip install lycoris-lora`")

from lycoris.functional.general import apply_dora_scale  # noqa: E402

from lorakiln.config.importers import import_config  # noqa: E402
from lorakiln.config.load import build_config  # noqa: E402
from lorakiln.errors import LorakilnError  # noqa: E402
from lorakiln.models.family import SD1  # noqa: E402
from lorakiln.models.names import kohya as keymap  # noqa: E402
from lorakiln.models.tiny import build_tiny_sd1_bundle  # noqa: E402
from lorakiln.networks.adapters import ADAPTERS, make_adapter  # noqa: E402
from lorakiln.networks.apply import apply_lora_file  # noqa: E402
from lorakiln.networks.dora import DoRAModule, magnitude_axis, weight_norm  # noqa: E402
from lorakiln.networks.export import diffusers_state_dict, read_lora_file, save_kohya_lora  # noqa: E402
from lorakiln.networks.file_adapters import FileDeltaAdapter  # noqa: E402
from lorakiln.networks.lora import LoRAModule  # noqa: E402
from lorakiln.networks.metadata import TrainingInfo, build_metadata  # noqa: E402
from lorakiln.networks.network import LoRANetwork, create_lora_network  # noqa: E402

# -- tiny SD1: network, training, export, generation -----------------------------------------------


def _unet_out(bundle: Any, grad: bool = False) -> torch.Tensor:
    """One U-Net call on fixed latents, conditioned by the text encoder on fixed token ids."""
    encoder = bundle.text_encoders[0]
    cfg = encoder.config
    ids = torch.randint(0, cfg.vocab_size, (1, cfg.max_position_embeddings), generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(grad):
        hidden = encoder(ids).last_hidden_state
        return bundle.unet(x, torch.tensor([400]), hidden).sample


def _dora_network(bundle: Any, algo: str = "locon") -> LoRANetwork:
    torch.manual_seed(0)
    return create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=2, algo=algo,
                               conv_dim=4 if algo == "locon" else None, dora_wd=True)


def _adam_steps(bundle: Any, net: LoRANetwork, steps: int, optimizer: torch.optim.Optimizer | None = None,
                ) -> torch.optim.Optimizer:
    optimizer = optimizer or torch.optim.Adam(net.param_groups(1e-2, 1e-2, 1e-2))
    for _ in range(steps):
        loss = nn.functional.mse_loss(_unet_out(bundle, grad=True), torch.zeros(1, 4, 8, 8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Any, LoRANetwork, Path, torch.Tensor, dict[str, torch.Tensor]]:
    """(bundle, DoRA LoCon network after 3 Adam steps, saved fp32 file, base output, initial m)."""
    bundle = build_tiny_sd1_bundle(seed=0)
    base = _unet_out(bundle)
    net = _dora_network(bundle)
    torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)  # fresh: exact no-op
    initial = {k: m.dora_scale.detach().clone() for k, m in net.loras()}
    _adam_steps(bundle, net, 3)
    path = save_kohya_lora(net, tmp_path_factory.mktemp("dora") / "dora.safetensors",
                           build_metadata(TrainingInfo(output_name="dora"), net), dtype="float")
    return bundle, net, path, base, initial


def test_dora_network_builds_dora_modules_everywhere() -> None:
    bundle = build_tiny_sd1_bundle(seed=0)
    base = _unet_out(bundle)
    net = _dora_network(bundle, "lora")
    assert net.dora and all(type(m) is DoRAModule for _, m in net.loras())
    assert net.counts() == {"unet": 192, "text_encoder": 72}  # kohya's default targets (sd-scripts networks/lora.py)
    torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)
    assert net.network_module == "lycoris.kohya"
    assert net.network_args == {"algo": "lora", "preset": "attn-mlp", "dora_wd": "True", "wd_on_output": "False"}
    net.remove()


def test_training_moves_the_magnitudes(trained) -> None:
    bundle, net, _, base, initial = trained
    assert not torch.allclose(_unet_out(bundle), base, atol=1e-4)
    still = {k for k, m in net.loras() if torch.equal(m.dora_scale.detach(), initial[k])}
    # Every magnitude got a gradient step except the mid block's self-attention query and key:
    # the tiny U-Net's mid block sees an 8x8 latent as one token, and softmax over a single key
    # is 1 whatever q·k is, so their gradient is exactly 0 (newer torch/diffusers compute it so).
    mid = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_"
    assert still <= {f"{mid}q", f"{mid}k"}, sorted(still)
    net.set_multiplier(0.0)
    try:
        torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)
    finally:
        net.set_multiplier(1.0)


def test_file_has_dora_scale_on_real_modules_with_lycoris_metadata(trained) -> None:
    bundle, net, path, _, _ = trained
    tensors, md = read_lora_file(path)
    suffixes = "|".join(re.escape(s) for s in ADAPTERS["locon"].key_suffixes)
    key_re = re.compile(rf"^lora_(unet|te)_[a-z0-9_]+\.({suffixes})$")
    assert not [k for k in tensors if not key_re.match(k)]
    modules: dict[str, set[str]] = {}
    for key in tensors:
        name, _, param = key.partition(".")
        modules.setdefault(name, set()).add(param)
    assert all(p == {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"} for p in modules.values())
    for name in modules:
        component, sub = keymap.kohya_to_diffusers_module(name, SD1)
        root = bundle.unet if component == "unet" else bundle.text_encoders[0]
        try:
            layer = root.get_submodule(sub)
        except AttributeError:  # transformers >= 5.6 CLIPTextModel has no text_model level
            layer = root.get_submodule(sub.removeprefix("text_model."))
        scale = tensors[f"{name}.dora_scale"]
        # [1, in(, 1, 1)]: ComfyUI sees shape[0] ≠ out and takes the input axis; A1111 broadcasts it.
        assert scale.shape == (1, layer.weight.shape[1], *[1] * (layer.weight.dim() - 2)), name
        assert magnitude_axis(tuple(scale.shape), layer.weight.shape) == "input"
        assert tensors[f"{name}.alpha"].dim() == 0
    # A1111's rule table lands every key on an LDM module; ComfyUI's `lora_unet_<diffusers path>`.
    ldm = keymap.sd1_ldm_module_names((n for n, _ in bundle.unet.named_modules()),
                                      (n for n, _ in bundle.text_encoders[0].named_modules()))
    assert not [k for k in modules if keymap.a1111_compvis_name(k) not in ldm]
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in modules  # LoCon convs carry DoRA too
    assert md["ss_network_module"] == "lycoris.kohya"
    args = json.loads(md["ss_network_args"])
    assert args == {"algo": "locon", "conv_dim": "4", "conv_alpha": "2", "dora_wd": "True", "wd_on_output": "False"}


def test_resume_round_trip_and_continued_training_are_exact(trained, tmp_path: Path) -> None:
    _, net, path, _, _ = trained
    bundle = build_tiny_sd1_bundle(seed=0)
    fresh = _dora_network(bundle)
    fresh.load_kohya_state_dict(read_lora_file(path)[0])
    theirs = net.state_dict()
    for key, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, theirs[key], rtol=0, atol=0)
    fresh.remove()
    # 1 + 1 steps through a saved file and the optimizer state equal 2 uninterrupted steps.
    one = build_tiny_sd1_bundle(seed=0)
    straight = _dora_network(one, "lora")
    _adam_steps(one, straight, 2)
    two = build_tiny_sd1_bundle(seed=0)
    first = _dora_network(two, "lora")
    opt = _adam_steps(two, first, 1)
    saved = save_kohya_lora(first, tmp_path / "half.safetensors", dtype="float")
    opt_state = copy.deepcopy(opt.state_dict())
    first.remove()
    second = _dora_network(two, "lora")
    second.load_kohya_state_dict(read_lora_file(saved)[0])
    opt2 = torch.optim.Adam(second.param_groups(1e-2, 1e-2, 1e-2))
    opt2.load_state_dict(opt_state)
    _adam_steps(two, second, 1, opt2)
    for key, tensor in second.state_dict().items():
        torch.testing.assert_close(tensor, straight.state_dict()[key], rtol=0, atol=0)


def test_dora_and_plain_files_do_not_mix_on_resume(trained) -> None:
    _, _, path, _, _ = trained
    bundle = build_tiny_sd1_bundle(seed=0)
    plain = create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=2, algo="locon", conv_dim=4)
    with pytest.raises(LorakilnError, match="set network.dora_wd = true"):
        plain.load_kohya_state_dict(read_lora_file(path)[0])
    plain.remove()
    dora = _dora_network(bundle)
    tensors = {k: v for k, v in read_lora_file(path)[0].items() if not k.endswith(".dora_scale")}
    with pytest.raises(LorakilnError, match="not trained with network.dora_wd"):
        dora.load_kohya_state_dict(tensors)


def _fuse_reference(bundle: Any, path: Path, strength: float) -> None:
    """W ← apply_dora_scale(W, (alpha/dim)·up@down, dora_scale, s) — LyCORIS's client rule."""
    tensors, _ = read_lora_file(path)
    with torch.no_grad():
        for key in {k.split(".")[0] for k in tensors}:
            component, sub = keymap.kohya_to_diffusers_module(key, SD1)
            root = bundle.unet if component == "unet" else bundle.text_encoders[0]
            try:
                layer = root.get_submodule(sub)
            except AttributeError:
                layer = root.get_submodule(sub.removeprefix("text_model."))
            down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
            scale = float(tensors[f"{key}.alpha"]) / down.shape[0]
            rebuild = (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape) * scale
            layer.weight.copy_(apply_dora_scale(layer.weight, rebuild, tensors[f"{key}.dora_scale"], strength))


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_generation_equals_fused_reference_weights(trained, strength: float) -> None:
    _, net, path, _, _ = trained
    hooked, fused = build_tiny_sd1_bundle(seed=0), build_tiny_sd1_bundle(seed=0)
    applied = apply_lora_file(hooked, path, te=strength)
    assert len(applied.modules) == len(net)
    assert all(isinstance(m, FileDeltaAdapter) and m.dora_axis == "input" for m in applied.modules.values())
    _fuse_reference(fused, path, strength)
    torch.testing.assert_close(_unet_out(hooked), _unet_out(fused), rtol=1e-4, atol=1e-5)
    applied.set_strength(0.0)
    torch.testing.assert_close(_unet_out(hooked), _unet_out(build_tiny_sd1_bundle(seed=0)), rtol=0, atol=0)
    applied.remove()


def test_generation_warns_about_output_axis_files(trained, tmp_path: Path, caplog) -> None:
    _, _, path, _, _ = trained
    tensors, md = read_lora_file(path)
    bundle = build_tiny_sd1_bundle(seed=0)
    for key in [k for k in tensors if k.endswith(".dora_scale")]:
        name = key.split(".")[0]
        up = tensors[f"{name}.lora_up.weight"]
        tensors[key] = torch.ones(up.shape[0], *[1] * (up.dim() - 1))  # [out, 1(, 1, 1)]
    other = tmp_path / "rows.safetensors"
    from safetensors.torch import save_file

    save_file(tensors, str(other), md)
    with caplog.at_level(logging.WARNING, logger="lorakiln.networks.apply"):
        applied = apply_lora_file(bundle, other)
    assert all(m.dora_axis == "output" for m in applied.modules.values())
    assert "per-output-row magnitudes" in caplog.text
    applied.remove()


# -- export, config, importer, inspect ------------------------------------------------------------


def test_diffusers_export_is_refused(trained) -> None:
    _, net, _, _, _ = trained
    with pytest.raises(LorakilnError, match=r"diffusers cannot load DoRA \(network.dora_wd\)"):
        diffusers_state_dict(net)


def test_make_adapter_dora_only_for_lora_and_locon() -> None:
    layer = nn.Linear(8, 8)
    assert type(make_adapter("locon", layer, 2, 1.0, dora_wd=True)) is DoRAModule
    assert type(make_adapter("lora", layer, 2, 1.0)) is LoRAModule
    with pytest.raises(ValueError, match="with lora/locon, not with 'loha'"):
        make_adapter("loha", layer, 2, 1.0, dora_wd=True)
    with pytest.raises(ValueError, match="network_dropout"):
        make_adapter("lora", layer, 2, 1.0, dora_wd=True, dropout=0.1)


def _cfg(tmp_path: Path, network: dict[str, Any], **sections: Any):
    raw = {"model": {"pretrained_model": "tiny:sd1"}, "data": {"train_data_dir": "train"}, "network": network,
           **sections}
    return build_config(raw, base_dir=tmp_path)


def test_config_key_and_checks(tmp_path: Path) -> None:
    assert _cfg(tmp_path, {"network_module": "locon", "dora_wd": True}).network.dora_wd is True
    assert _cfg(tmp_path, {}).network.dora_wd is False
    for network, sections, match in (
        ({"dora_wd": True}, {"output": {"save_diffusers": True}}, r"network.dora_wd = false.*save_diffusers"),
        ({"network_module": "lokr", "dora_wd": True}, {}, "'lora' or 'locon', not 'lokr'"),
        ({"dora_wd": True, "network_dropout": 0.1}, {}, "does not work with network.dora_wd"),
        ({"dora_wd": True}, {"train": {"mode": "full"}}, "dora_wd is a LoRA option"),
    ):
        with pytest.raises(Exception, match=match):
            _cfg(tmp_path, network, **sections)


def _import(tmp_path: Path, module: str, args: list[str]) -> Any:
    text = (f'network_module = "{module}"\nnetwork_args = {json.dumps(args)}\n'
            'pretrained_model_name_or_path = "m"\ntrain_data_dir = "t"\n')
    return import_config(text, fmt="sd-scripts", base_dir=tmp_path)


def test_sd_scripts_dora_wd_is_imported(tmp_path: Path) -> None:
    result = _import(tmp_path, "lycoris.kohya", ["algo=locon", "dora_wd=True", "conv_dim=4"])
    assert result.problem is None, result.problem
    net = build_config(tomllib.loads(result.text), base_dir=tmp_path).network
    assert (net.network_module, net.dora_wd, net.conv_dim) == ("locon", True, 4)
    assert any("one per input channel" in e.reason for e in result.draft.notes)
    quiet = _import(tmp_path, "lycoris.kohya", ["dora_wd=True", "wd_on_output=False"])
    assert build_config(tomllib.loads(quiet.text), base_dir=tmp_path).network.dora_wd is True
    assert not any("input channel" in e.reason for e in quiet.draft.notes)
    loha = _import(tmp_path, "lycoris.kohya", ["algo=loha", "dora_wd=True"])
    net = build_config(tomllib.loads(loha.text), base_dir=tmp_path).network
    assert (net.network_module, net.dora_wd) == ("loha", False)
    assert any("DoRA with LoRA/LoCon only" in e.reason for e in loha.draft.unmapped)
    kohya = _import(tmp_path, "networks.lora", ["dora_wd=True"])  # kohya's networks.lora has no DoRA
    assert build_config(tomllib.loads(kohya.text), base_dir=tmp_path).network.dora_wd is False
    assert any("dora_wd" in e.option for e in kohya.draft.unmapped)


def test_lora_info_reports_the_caveats(trained, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from lorakiln.lora_tools.files.info import inspect_lora

    _, net, path, _, _ = trained
    info = inspect_lora(path)
    assert info.dora_modules == len(net)
    [note] = [n for n in info.notes if "DoRA" in n]
    assert "diffusers drops them" in note and "apply those alike" in note and "not portable" not in note
    tensors, md = read_lora_file(path)
    key = next(k for k in tensors if k.endswith(".dora_scale"))
    up = tensors[key.replace("dora_scale", "lora_up.weight")]
    tensors[key] = torch.ones(up.shape[0], *[1] * (up.dim() - 1))
    rows = tmp_path / "rows.safetensors"
    save_file(tensors, str(rows), md)
    [note] = [n for n in inspect_lora(rows).notes if "DoRA" in n]
    assert "1 per output channel" in note and "not portable" in note


def test_train_run_writes_a_dora_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lorakiln train` wiring (prepare.py): network.dora_wd reaches the modules and the file."""
    from PIL import Image

    from lorakiln.training.loop import train

    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    sub = tmp_path / "train" / "2_zwx toy"
    sub.mkdir(parents=True)
    for i, colour in enumerate([(200, 60, 60), (60, 90, 200)]):
        Image.new("RGB", (64, 64), colour).save(sub / f"img{i}.png")
        (sub / f"img{i}.txt").write_text(f"photo of zwx {i}", encoding="utf-8")
    raw = {"model": {"pretrained_model": "tiny:sd1"},
           "data": {"train_data_dir": "train", "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128},
           "network": {"network_dim": 4, "network_alpha": 2, "dora_wd": True},
           "train": {"train_batch_size": 2, "max_train_steps": 1, "unet_lr": 1e-2, "text_encoder_lr": 1e-2},
           "output": {"output_dir": "out", "output_name": "last"}}
    result = train(build_config(raw, base_dir=tmp_path), progress=False)
    tensors, md = read_lora_file(result.lora_path)
    assert md["ss_network_module"] == "lycoris.kohya" and json.loads(md["ss_network_args"])["dora_wd"] == "True"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = build_tiny_sd1_bundle(seed=0).unet.get_submodule(keymap.kohya_to_diffusers_module(key, SD1)[1])
    initial = weight_norm(layer.weight.detach(), "input").half()  # the file is fp16 (save_precision)
    magnitude = tensors[f"{key}.dora_scale"]
    assert magnitude.shape == initial.shape and magnitude.dtype == torch.float16
    assert not torch.equal(magnitude, initial)  # one step moved the magnitudes …
    torch.testing.assert_close(magnitude, initial, rtol=0.05, atol=0.02)  # … away from ‖W‖
    assert sum(k.endswith(".dora_scale") for k in tensors) == 192 + 72
