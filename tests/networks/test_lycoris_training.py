"""LoCon / LoHa / LoKr end to end on tiny SD1 (issue 7 item 1).

For each algorithm: a few optimizer steps change the output; the written file follows the
kohya/LyCORIS key grammar (sd-scripts, LyCORIS) and every module name lands on a real LDM module
through A1111's rule table (``convert_diffusers_name_to_compvis``); applying the file at strength 0.5 in generation equals fusing
ΔW·0.5 into the weights; a resume through `load_kohya_state_dict` is exact. Plus the config,
diffusers-export and importer rules that go with the algorithms.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from lorakiln.config.importers import import_config
from lorakiln.config.load import build_config
from lorakiln.errors import LorakilnError
from lorakiln.models.family import SD1
from lorakiln.models.names import kohya as keymap
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.adapters import ADAPTERS
from lorakiln.networks.apply import apply_lora_file
from lorakiln.networks.export import diffusers_state_dict, read_lora_file, save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import LoRANetwork, create_lora_network

ALGOS = ("locon", "loha", "lokr")
OPTS: dict[str, dict[str, Any]] = {
    "locon": {"conv_dim": 4, "conv_alpha": 2},
    "loha": {"conv_dim": 4, "conv_alpha": 2},
    "lokr": {"conv_dim": 4, "conv_alpha": 2, "lokr_factor": 4},
}


def _network(bundle: Any, algo: str) -> LoRANetwork:
    torch.manual_seed(0)
    return create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=2, algo=algo, **OPTS[algo])


def _unet_out(bundle: Any, grad: bool = False) -> torch.Tensor:
    """One U-Net call on fixed latents, conditioned by the text encoder on fixed token ids."""
    encoder = bundle.text_encoders[0]
    cfg = encoder.config
    ids = torch.randint(0, cfg.vocab_size, (1, cfg.max_position_embeddings), generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(grad):
        hidden = encoder(ids).last_hidden_state
        return bundle.unet(x, torch.tensor([400]), hidden).sample


@pytest.fixture(scope="module", params=ALGOS)
def trained(request, tmp_path_factory) -> tuple[str, Any, LoRANetwork, Path, torch.Tensor]:
    """(algo, bundle, network after 3 Adam steps, saved fp32 kohya file, base output)."""
    algo = request.param
    bundle = build_tiny_sd1_bundle(seed=0)
    base = _unet_out(bundle)
    net = _network(bundle, algo)
    torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)  # fresh adapters: exact no-op
    optimizer = torch.optim.Adam(net.param_groups(1e-2, 1e-2, 1e-2))
    target = torch.zeros_like(base)
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(_unet_out(bundle, grad=True), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    info = TrainingInfo(output_name=f"{algo}-test")
    path = save_kohya_lora(net, tmp_path_factory.mktemp(algo) / f"{algo}.safetensors", build_metadata(info, net),
                           dtype="float")
    return algo, bundle, net, path, base


def test_training_changes_the_output(trained) -> None:
    algo, bundle, net, _, base = trained
    out = _unet_out(bundle)
    assert not torch.allclose(out, base, atol=1e-4), algo
    net.remove()
    try:
        torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)  # detached: base model again
    finally:
        net.attach()
    net.set_multiplier(0.0)
    try:
        torch.testing.assert_close(_unet_out(bundle), base, rtol=0, atol=0)
    finally:
        net.set_multiplier(1.0)


def test_file_keys_follow_lycoris_grammar_and_a1111_names(trained) -> None:
    algo, bundle, net, path, _ = trained
    tensors, md = read_lora_file(path)
    suffixes = "|".join(re.escape(s) for s in ADAPTERS[algo].key_suffixes)
    key_re = re.compile(rf"^(lora_unet|lora_te)_[a-z0-9_]+\.({suffixes})$")
    bad = [k for k in tensors if not key_re.match(k)]
    assert not bad, bad[:5]
    modules: dict[str, set[str]] = {}
    for key in tensors:
        name, _, param = key.partition(".")
        modules.setdefault(name, set()).add(param)
    for name, params in modules.items():
        assert params == set(net[name].state_dict()), name
        assert tensors[f"{name}.alpha"].dim() == 0
    # LoCon conv targets are there: ResNet 3×3 convs, time_emb_proj, samplers (sd-scripts LoCon).
    for probe in ("lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
                  "lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv"):
        assert probe in modules, probe
    ldm = keymap.sd1_ldm_module_names((n for n, _ in bundle.unet.named_modules()),
                                      (n for n, _ in bundle.text_encoders[0].named_modules()))
    missing = [k for k in modules if keymap.a1111_compvis_name(k) not in ldm]
    assert not missing, missing[:5]
    if algo == "locon":
        assert md["ss_network_module"] == "networks.lora"
        assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2"}
        assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[1:] == (32, 3, 3)
    else:
        assert md["ss_network_module"] == "lycoris.kohya"
        args = json.loads(md["ss_network_args"])
        assert args["algo"] == algo and args["conv_dim"] == "4" and args["conv_alpha"] == "2"
        assert algo != "lokr" or args["factor"] == "4"


def _fuse(bundle: Any, net: LoRANetwork, strength: float) -> None:
    with torch.no_grad():
        for key, module in net.loras():
            component, sub = keymap.kohya_to_diffusers_module(key, SD1)
            root = bundle.unet if component == "unet" else bundle.text_encoders[0]
            try:
                layer = root.get_submodule(sub)
            except AttributeError:  # transformers >= 5.6 CLIPTextModel has no text_model level
                layer = root.get_submodule(sub.removeprefix("text_model."))
            layer.weight += strength * module.delta_weight().to(layer.weight.dtype)


def test_generation_strength_half_equals_fused(trained) -> None:
    algo, _, net, path, _ = trained
    hooked, fused = build_tiny_sd1_bundle(seed=0), build_tiny_sd1_bundle(seed=0)
    applied = apply_lora_file(hooked, path, te=0.5)
    assert len(applied.modules) == len(net)
    _fuse(fused, net, 0.5)
    torch.testing.assert_close(_unet_out(hooked), _unet_out(fused), rtol=1e-4, atol=1e-5)
    applied.set_strength(0.0)
    torch.testing.assert_close(_unet_out(hooked), _unet_out(build_tiny_sd1_bundle(seed=0)), rtol=0, atol=0)
    applied.remove()


def test_resume_round_trip_is_exact(trained) -> None:
    algo, _, net, path, _ = trained
    bundle = build_tiny_sd1_bundle(seed=0)
    fresh = create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=2, algo=algo, **OPTS[algo])
    fresh.load_kohya_state_dict(read_lora_file(path)[0])
    theirs = net.state_dict()
    for key, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, theirs[key], rtol=0, atol=0)
    other = "loha" if algo != "loha" else "lokr"
    wrong = create_lora_network(bundle.unet, bundle.text_encoders, SD1, dim=4, alpha=2, algo=other, conv_dim=4)
    with pytest.raises(LorakilnError, match="does not match"):
        wrong.load_kohya_state_dict(read_lora_file(path)[0])
    wrong.remove()
    fresh.remove()


def test_diffusers_export_locon_only(trained) -> None:
    algo, _, net, _, _ = trained
    if algo == "locon":
        sd = diffusers_state_dict(net)
        conv = sd["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"]
        assert conv.shape[2:] == (3, 3)  # PEFT Conv2d LoRA: lora_A is the k×k down conv
    else:
        with pytest.raises(LorakilnError, match="diffusers cannot load"):
            diffusers_state_dict(net)


# -- config and importers --------------------------------------------------------------------------

def _cfg(tmp_path: Path, **network: Any):
    raw = {"model": {"pretrained_model": "tiny:sd1"}, "data": {"train_data_dir": "train"}, "network": network}
    return build_config(raw, base_dir=tmp_path)


def test_config_algorithms_and_checks(tmp_path: Path) -> None:
    assert _cfg(tmp_path, network_module="networks.lora").network.network_module == "lora"
    cfg = _cfg(tmp_path, network_module="lokr", lokr_factor=8, lokr_decompose_both=True, use_tucker=True)
    assert (cfg.network.lokr_factor, cfg.network.lokr_decompose_both) == (8, True)
    for bad, match in (({"network_module": "loha", "lokr_factor": 8}, "LoKr option"),
                       ({"network_module": "lora", "use_tucker": True}, "LoHa/LoKr option"),
                       ({"network_module": "loha", "network_dropout": 0.1}, "dropout"),
                       ({"network_module": "lora", "conv_alpha": 4}, "needs network.conv_dim"),
                       ({"network_module": "lycoris.kohya"}, "needs an algo")):
        with pytest.raises(Exception, match=match):
            _cfg(tmp_path, **bad)
    with pytest.raises(Exception, match="diffusers cannot load"):
        build_config({"model": {"pretrained_model": "tiny:sd1"}, "data": {"train_data_dir": "train"},
                      "network": {"network_module": "loha"}, "output": {"save_diffusers": True}}, base_dir=tmp_path)


def test_sd_scripts_lycoris_args_are_imported(tmp_path: Path) -> None:
    text = """accelerate launch train_network.py --pretrained_model_name_or_path=sd15.safetensors \\
      --train_data_dir=train --output_dir=out --network_module=lycoris.kohya --network_dim 16 \\
      --network_args "algo=lokr" "conv_dim=8" "conv_alpha=4" "factor=8" "use_cp=True" "block_dims=1,2" """
    result = import_config(text, fmt="auto", base_dir=tmp_path)
    assert result.problem is None, result.problem
    net = build_config(tomllib.loads(result.text), base_dir=tmp_path).network
    assert (net.network_module, net.conv_dim, net.conv_alpha, net.lokr_factor, net.use_tucker) == (
        "lokr", 8, 4.0, 8, True)
    unmapped = {e.option for e in result.draft.unmapped}
    assert any("block_dims" in o for o in unmapped) and not any("conv_dim" in o for o in unmapped)


def test_sd_scripts_loha_and_kohya_locon(tmp_path: Path) -> None:
    loha = import_config('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "conv_dim=8"]\n'
                         'pretrained_model_name_or_path = "m"\ntrain_data_dir = "t"\n', fmt="sd-scripts",
                         base_dir=tmp_path)
    assert loha.problem is None, loha.problem
    net = build_config(tomllib.loads(loha.text), base_dir=tmp_path).network
    assert (net.network_module, net.conv_dim) == ("loha", 8)
    locon = import_config('network_module = "networks.lora"\nnetwork_args = ["conv_dim=4"]\n'
                          'pretrained_model_name_or_path = "m"\ntrain_data_dir = "t"\n', fmt="sd-scripts",
                          base_dir=tmp_path)
    net = build_config(tomllib.loads(locon.text), base_dir=tmp_path).network
    assert (net.network_module, net.conv_dim, net.conv_alpha) == ("lora", 4, None)


def test_train_run_writes_a_lokr_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lorakiln train` wiring (prepare.py): network.network_module and its options reach the file."""
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
           "network": {"network_dim": 4, "network_alpha": 2, "network_module": "lokr", "lokr_factor": 4},
           "train": {"train_batch_size": 2, "max_train_steps": 1, "unet_lr": 1e-3, "text_encoder_lr": 5e-4},
           "output": {"output_dir": "out", "output_name": "last"}}
    result = train(build_config(raw, base_dir=tmp_path), progress=False)
    tensors, md = read_lora_file(result.lora_path)
    assert md["ss_network_module"] == "lycoris.kohya" and json.loads(md["ss_network_args"])["algo"] == "lokr"
    assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.lokr_") for k in tensors)
