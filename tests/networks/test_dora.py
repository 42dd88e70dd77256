"""DoRA (``dora_wd``): maths against lycoris-lora, the axis choice, training, export, generation.

* **Oracle.** LyCORIS ``LoConModule(weight_decompose=True, wd_on_out=False)`` and ours get the same
  tensors: same file keys/shapes, same init seed for seed, same forward at multiplier 1, and the
  fused weight at strength ``s`` equals ``lycoris.functional.general.apply_dora_scale`` (the
  client rule ``W + s·(W' − W)``), which LoConModule's own multiplier does *not* follow.
* **Axis.** A1111's and ComfyUI's DoRA rules (A1111 ``apply_weight_decompose``, ComfyUI ``weight_decompose``; written here from their
  description, not their code) agree on ``[1, in]`` magnitudes and disagree on ``[out, 1]``.
* **Tiny SD1.** A fresh network is an exact no-op; three Adam steps move ``dora_scale``; the file
  has ``dora_scale`` ``[1, in(, 1, 1)]`` on real modules, LyCORIS metadata, resumes exactly;
  generation at strength 1/0.5 equals the fused reference weights and strength 0 is the base.
* Config, importer, diffusers refusal and ``lora info`` notes.
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
from lycoris.modules.locon import LoConModule as RefLoCon  # noqa: E402
from lycoris.modules.loha import LohaModule as RefLoha  # noqa: E402

from lorakiln.config.importers import import_config  # noqa: E402
from lorakiln.config.load import build_config  # noqa: E402
from lorakiln.errors import LorakilnError  # noqa: E402
from lorakiln.models.family import SD1  # noqa: E402
from lorakiln.models.names import kohya as keymap  # noqa: E402
from lorakiln.models.tiny import build_tiny_sd1_bundle  # noqa: E402
from lorakiln.networks.adapters import ADAPTERS, make_adapter  # noqa: E402
from lorakiln.networks.apply import apply_lora_file  # noqa: E402
from lorakiln.networks.dora import DoRAModule, dora_weight, magnitude_axis, weight_norm  # noqa: E402
from lorakiln.networks.export import diffusers_state_dict, read_lora_file, save_kohya_lora  # noqa: E402
from lorakiln.networks.file_adapters import FileDeltaAdapter  # noqa: E402
from lorakiln.networks.lora import LoRAModule  # noqa: E402
from lorakiln.networks.metadata import TrainingInfo, build_metadata  # noqa: E402
from lorakiln.networks.network import LoRANetwork, create_lora_network  # noqa: E402


@pytest.fixture(autouse=True)
def _eager_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin LyCORIS to its eager torch path (no triton/tilelang/torch.compile backends)."""
    monkeypatch.setenv("LYCORIS_KERNEL_BACKEND", "torch")


TARGETS: dict[str, Any] = {
    "linear": lambda: nn.Linear(24, 16),
    "conv1x1": lambda: nn.Conv2d(8, 12, 1),
    "conv3x3_s2": lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1),
}


def _target(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TARGETS[name]()


def _input(target: nn.Module, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, nn.Linear):
        return torch.randn(3, 5, target.in_features, generator=gen)
    return torch.randn(2, target.in_channels, 9, 9, generator=gen)


def _randomize(module: nn.Module, seed: int = 2) -> None:
    """Non-zero factors, and magnitudes moved away from ‖W‖ (but kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(p * (1 + 0.3 * noise.tanh()) if name == "dora_scale" else noise * 0.3)


def _assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 2e-6) -> None:
    """max |ours − ref| ≤ rtol · max |ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = (ours.detach().float() - ref.detach().float()).abs().max().item()
    bound = rtol * max(ref.detach().float().abs().max().item(), 1e-30)
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


# -- the maths against LyCORIS --------------------------------------------------------------------

CASES = [(t, dim, alpha) for t in TARGETS for dim, alpha in ((4, 2.0), (3, None), (2, 6.0))]


@pytest.mark.parametrize(("target", "dim", "alpha"), CASES)
def test_dora_matches_lycoris(target: str, dim: int, alpha: float | None) -> None:
    base = _target(target)
    torch.manual_seed(123)
    ref = RefLoCon("ref", copy.deepcopy(base), 1.0, dim, alpha, weight_decompose=True, wd_on_out=False)
    torch.manual_seed(123)
    ours = DoRAModule(copy.deepcopy(base), dim, alpha)
    # Same file keys, shapes and values — seed for seed, dora_scale = ‖W‖ per input column.
    ref_sd = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_sd[key].detach()), key
    in_dim = base.weight.shape[1]
    assert tuple(ours.dora_scale.shape) == ((1, in_dim) if target == "linear" else (1, in_dim, 1, 1))
    assert ours.scale == pytest.approx(ref.scale)

    _randomize(ref)
    ours.load_state_dict({k: v.detach() for k, v in ref.state_dict().items()}, strict=True)
    W = base.weight.detach()
    lora_delta = ref.get_diff_weight()[0].reshape(W.shape)  # (alpha/dim)·up@down
    _assert_rel_close(ours.lora_delta(), lora_delta)
    merged, _ = ref.get_merged_weight()  # LyCORIS's W' at multiplier 1
    _assert_rel_close(W + ours.delta_weight(), merged)
    for strength in (1.0, 0.5, 0.0, 1.7):  # the client rule W + s·(W' − W)
        want = apply_dora_scale(W, lora_delta, ref.dora_scale.detach(), strength)
        _assert_rel_close(W + strength * ours.delta_weight(), want)

    x = _input(base)
    base_out = base(x)
    ref.apply_to()
    ours.attach()
    try:
        with torch.no_grad():
            want, got = ref.org_module[0](x), ours.target(x)
        assert not torch.allclose(want, base_out)
        _assert_rel_close(got, want)
        # At s ≠ 1 LoConModule keeps the whole ΔW and interpolates only the rescale factor; the
        # clients (and we) interpolate the weight change. Prove the test tells them apart.
        ref.multiplier = ours.multiplier = 0.5
        with torch.no_grad():
            lyco_half, ours_half = ref.org_module[0](x), ours.target(x)
        op = nn.functional.linear if target == "linear" else (
            lambda inp, w: nn.functional.conv2d(inp, w, None, base.stride, base.padding))
        client = op(x, apply_dora_scale(W, lora_delta, ref.dora_scale.detach(), 0.5)) + (
            base.bias if target == "linear" else base.bias[:, None, None])
        _assert_rel_close(ours_half, client, rtol=1e-5)
        assert not torch.allclose(lyco_half, client, atol=1e-4)
    finally:
        ref.restore()
        ours.detach()


@pytest.mark.parametrize("target", list(TARGETS))
def test_fresh_module_is_an_exact_no_op(target: str) -> None:
    base = _target(target)
    x = _input(base)
    want = base(x).detach()
    module = DoRAModule(base, 4, 1.0)
    assert torch.count_nonzero(module.delta_weight()) == 0
    module.attach()
    torch.testing.assert_close(base(x), want, rtol=0, atol=0)
    module.detach()


def test_norm_is_detached_in_the_backward_pass() -> None:
    """Gradients are those of ``m · V / stopgrad(‖V‖)`` (paper §4.3), not of the full quotient."""
    base = _target("linear")
    module = DoRAModule(base, 4, 2.0)
    _randomize(module)
    x = _input(base)
    module.attach()
    base(x).square().sum().backward()
    module.detach()
    ours = {n: p.grad.clone() for n, p in module.named_parameters()}

    def grads(detach: bool) -> dict[str, torch.Tensor]:
        params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
        W = base.weight.detach()
        v = W + module.scale * params["lora_up.weight"] @ params["lora_down.weight"]
        norm = v.norm(dim=0, keepdim=True)
        w_new = params["dora_scale"] * v / (norm.detach() if detach else norm)
        nn.functional.linear(x, w_new, base.bias).square().sum().backward()
        return {n: p.grad for n, p in params.items()}

    detached, full = grads(True), grads(False)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, detached[name], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(detached["lora_up.weight"], full["lora_up.weight"], atol=1e-4)


# -- the axis: what A1111 and ComfyUI compute --------------------------------------------------------


def _a1111_weight(W: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    """A1111 (after its DoRA scale fix): merged = W + (alpha/dim)·up@down, normalised by the norm of
    each *input* column whatever ``m``'s shape, then W + s·(merged·m/norm − W)."""
    merged = W + delta
    norm = merged.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1)
    norm = norm.reshape(W.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
    return W + s * (merged * (m / norm) - W)


def _comfy_weight(W: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    """ComfyUI: output axis iff m.shape[0] == W.shape[0], and then the norm is of the *base* W;
    otherwise the input-column norm of W + ΔW; eps added; W + s·(W' − W)."""
    calc = W + delta
    if m.shape[0] == W.shape[0]:
        norm = W.reshape(W.shape[0], -1).norm(dim=1).reshape(W.shape[0], *[1] * (W.dim() - 1))
    else:
        norm = calc.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1)
        norm = norm.reshape(W.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
    return W + s * (calc * (m / (norm + torch.finfo(W.dtype).eps)) - W)


@pytest.mark.parametrize("target", list(TARGETS))
def test_input_axis_is_the_one_a1111_and_comfyui_agree_on(target: str) -> None:
    base = _target(target)
    W = base.weight.detach()
    module = DoRAModule(copy.deepcopy(base), 4, 2.0)
    _randomize(module)
    delta = module.lora_delta().detach()
    m_in = module.dora_scale.detach()
    for s in (1.0, 0.6):
        ours = W + s * module.delta_weight().detach()
        _assert_rel_close(_a1111_weight(W, delta, m_in, s), ours, rtol=1e-5)
        _assert_rel_close(_comfy_weight(W, delta, m_in, s), ours, rtol=1e-5)
    # The same update with LyCORIS's default per-output-row magnitudes: the clients disagree.
    m_out = weight_norm(W + delta, "output") * 1.1
    assert magnitude_axis(tuple(m_out.shape), W.shape) == "output"
    a1111, comfy = _a1111_weight(W, delta, m_out, 1.0), _comfy_weight(W, delta, m_out, 1.0)
    assert not torch.allclose(a1111, comfy, rtol=1e-2)
    assert not torch.allclose(comfy, dora_weight(W, delta, m_out, "output"), rtol=1e-3)


def test_magnitude_axis_from_shape() -> None:
    assert magnitude_axis((1, 24), (16, 24)) == "input"
    assert magnitude_axis((1, 8, 1, 1), (12, 8, 3, 3)) == "input"
    assert magnitude_axis((16, 1), (16, 24)) == "output"
    assert magnitude_axis((12, 1, 1, 1), (12, 8, 3, 3)) == "output"
    assert magnitude_axis((16, 1), (16, 16)) == "output"  # square: ComfyUI's rule, shape[0] == out
    with pytest.raises(ValueError, match="fits neither axis"):
        magnitude_axis((1, 5), (16, 24))


# -- foreign files: LyCORIS output-axis DoRA and DoHa -----------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
def test_file_adapter_applies_lycoris_output_axis_as_lycoris(target: str) -> None:
    base = _target(target)
    ref = RefLoCon("ref", copy.deepcopy(base), 1.0, 4, 2.0, weight_decompose=True)  # wd_on_out=True
    _randomize(ref)
    tensors = {k: v.detach() for k, v in ref.state_dict().items()}
    assert tensors["dora_scale"].shape[0] == base.weight.shape[0]
    ours = FileDeltaAdapter(copy.deepcopy(base), "lora", tensors)
    assert ours.dora_axis == "output"
    x = _input(base)
    ref.apply_to()
    ours.attach()
    try:
        with torch.no_grad():
            _assert_rel_close(ours.target(x), ref.org_module[0](x))
    finally:
        ref.restore()
        ours.detach()


@pytest.mark.parametrize("target", ["linear", "conv3x3_s2"])
def test_file_adapter_applies_doha_with_the_client_rule(target: str) -> None:
    base = _target(target)
    ref = RefLoha("ref", copy.deepcopy(base), 1.0, 3, 1.5, weight_decompose=True, wd_on_out=False)
    _randomize(ref)
    tensors = {k: v.detach() for k, v in ref.state_dict().items()}
    ours = FileDeltaAdapter(copy.deepcopy(base), "loha", tensors)
    assert ours.dora and ours.dora_axis == "input"
    W = base.weight.detach()
    delta = ref.get_weight(ref.shape).reshape(W.shape).detach()  # what LohaModule's forward adds
    for s in (1.0, 0.5):
        want = apply_dora_scale(W, delta, ref.dora_scale.detach(), s)
        _assert_rel_close(W + s * ours.delta_weight(), want)


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
