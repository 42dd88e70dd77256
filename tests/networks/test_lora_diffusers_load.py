"""diffusers as a real client (tiny pipeline, ``load_lora_weights``, ``fuse_lora``): both export formats load cleanly and fuse to ΔW.

dim 8 / alpha 4 means a loader that ignored alpha would be off by 2× — the fused-weight check
proves the alpha semantics and the name mapping of all 192 + 72 modules at once.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from networks_support import ALPHA, DIM, randomize_up
from safetensors.torch import load_file, save_file

from lorakiln.models.family import SD1
from lorakiln.networks.export import save_diffusers_lora, save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network


@pytest.fixture(scope="module")
def pipe(tiny_sd1_dir: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        tiny_sd1_dir, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Export a random-up network built over the pipeline's own modules, then detach it."""
    out = tmp_path_factory.mktemp("lora")
    net = create_lora_network(pipe.unet, [pipe.text_encoder], SD1, dim=DIM, alpha=ALPHA)
    randomize_up(net, seed=3)
    net.remove()
    deltas = {(net.parts[k], net.module_paths[k]): lora.delta_weight() for k, lora in net.loras()}
    md = build_metadata(TrainingInfo(output_name="tiny"), net)
    return {
        "kohya": save_kohya_lora(net, out / "tiny.safetensors", md, dtype="float"),
        "kohya_fp16": save_kohya_lora(net, out / "tiny_fp16.safetensors", md, dtype="fp16"),
        "diffusers": save_diffusers_lora(net, out / "diffusers"),
        "deltas": deltas,
    }


def _component(pipe, part: str) -> torch.nn.Module:
    return pipe.unet if part == "unet" else getattr(pipe, part)


def _lora_layer_counts(pipe) -> tuple[int, int]:
    from peft.tuners.lora import LoraLayer

    return (
        sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()),
        sum(isinstance(m, LoraLayer) for m in pipe.text_encoder.modules()),
    )


def _weight(pipe, part: str, path: str) -> torch.Tensor:
    module = _component(pipe, part).get_submodule(path)
    return getattr(module, "base_layer", module).weight


@pytest.mark.parametrize(("fmt", "tol"), [("kohya", 1e-5), ("kohya_fp16", 2e-3), ("diffusers", 1e-5)])
def test_load_lora_weights_clean_and_fused_delta(
    pipe, exported, library_warnings, fmt: str, tol: float
) -> None:
    deltas: dict[tuple[str, str], torch.Tensor] = exported["deltas"]  # type: ignore[assignment]
    before = {key: _weight(pipe, *key).detach().clone() for key in deltas}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(exported[fmt]), adapter_name=fmt)
        messages = [r.getMessage() for r in library_warnings]
        messages += [str(w.message) for w in caught if re.search(r"key|lora|adapter", str(w.message), re.I)]
        assert not messages, messages
        assert _lora_layer_counts(pipe) == (192, 72)
        pipe.fuse_lora(lora_scale=1.0)
        for key, delta in deltas.items():
            change = _weight(pipe, *key).detach() - before[key]
            torch.testing.assert_close(
                change, delta, rtol=tol, atol=tol * delta.abs().max().item(), msg=str(key)
            )
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    for key in deltas:  # the shared pipeline is back to its base weights
        torch.testing.assert_close(_weight(pipe, *key), before[key])


def test_warning_capture_is_effective(pipe, exported, library_warnings, tmp_path: Path) -> None:
    """Negative control: a file missing one tensor must produce a captured warning."""
    tensors = load_file(str(exported["diffusers"]))
    tensors.pop(next(k for k in tensors if k.endswith("lora_B.weight")))
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), {"format": "pt"})
    try:
        pipe.load_lora_weights(str(broken), adapter_name="broken")
    finally:
        pipe.unload_lora_weights()
    assert any(r.levelno >= logging.WARNING and "missing" in r.getMessage() for r in library_warnings)


def test_locon_kohya_file_loads_in_diffusers_and_fuses_every_conv(
    pipe, library_warnings, tmp_path: Path
) -> None:
    """issue 7: a LoCon file (ResNet 3×3 convs, samplers) loads in diffusers where the format
    allows it — diffusers' kohya converter takes any `lora_down`/`lora_up`/`alpha` module."""
    net = create_lora_network(pipe.unet, [pipe.text_encoder], SD1, dim=DIM, alpha=ALPHA, algo="locon",
                              conv_dim=4, conv_alpha=2.0)
    randomize_up(net, seed=5)
    net.remove()
    deltas = {(net.parts[k], net.module_paths[k]): lora.delta_weight() for k, lora in net.loras()}
    convs = [key for key in deltas if _weight(pipe, *key).dim() == 4 and _weight(pipe, *key).shape[-1] == 3]
    assert len(convs) > 20  # resnet conv1/conv2 and the down/up samplers
    path = save_kohya_lora(net, tmp_path / "locon.safetensors", build_metadata(TrainingInfo(output_name="l"), net),
                           dtype="float")
    before = {key: _weight(pipe, *key).detach().clone() for key in deltas}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path), adapter_name="locon")
        messages = [r.getMessage() for r in library_warnings]
        messages += [str(w.message) for w in caught if re.search(r"key|lora|adapter", str(w.message), re.I)]
        assert not messages, messages
        pipe.fuse_lora(lora_scale=1.0)
        for key, delta in deltas.items():
            change = _weight(pipe, *key).detach() - before[key]
            torch.testing.assert_close(change, delta, rtol=1e-5, atol=1e-5 * delta.abs().max().item(), msg=str(key))
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
