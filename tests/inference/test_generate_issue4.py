"""Issue-4 numeric checks: strength 0.5 equals a fused LoRA at 0.5, stacked LoRAs add up, an
embedding in the prompt changes the conditioning exactly as loading it does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorakiln.inference.generate import LoRASet, generate
from lorakiln.inference.infotext import GenerationParams
from lorakiln.inference.pipeline import build_pipeline
from lorakiln.inference.weighting import encode_prompt
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.export import read_lora_file, save_kohya_lora
from lorakiln.networks.keymap import kohya_to_diffusers_module
from lorakiln.networks.lora import delta_weight
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

P = GenerationParams(prompt="photo of zwx", steps=3, sampler="Euler", cfg_scale=5, seed=11, width=64, height=64,
                     schedule_type=None)


def _save_lora(folder: Path, name: str, seed: int) -> Path:
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=2, alpha=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.2)
    path = save_kohya_lora(net, folder / f"{name}.safetensors", build_metadata(TrainingInfo(output_name=name), net),
                           dtype="float")
    net.remove()
    return path


def _fuse(bundle, path: Path, strength: float) -> None:
    tensors, _ = read_lora_file(path)
    with torch.no_grad():
        for key in {k.split(".")[0] for k in tensors}:
            component, sub = kohya_to_diffusers_module(key, SD1)
            root = bundle.unet if component == "unet" else bundle.text_encoders[0]
            module = root.get_submodule(sub if component == "unet" else sub.removeprefix("text_model."))
            down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
            module.weight += strength * delta_weight(up, down, float(tensors[f"{key}.alpha"]) / down.shape[0],
                                                     module.weight.shape)


def _unet_out(bundle, prompt: str) -> torch.Tensor:
    pipe = build_pipeline(bundle)
    hidden, _ = encode_prompt(pipe, bundle, prompt)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.unet(x, torch.tensor([400]), hidden).sample


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    _save_lora(folder, "a", 1)
    _save_lora(folder, "b", 2)
    return folder


def test_half_strength_and_two_loras_equal_fused_weights(loras: Path) -> None:
    hooked = build_tiny_sd1_bundle(seed=0)
    fused = build_tiny_sd1_bundle(seed=0)
    _fuse(fused, loras / "a.safetensors", 0.5)
    _fuse(fused, loras / "b.safetensors", 0.8)
    session = LoRASet(hooked, loras)
    try:
        [text] = session.activate(["photo of zwx <lora:a:0.5> <lora:b:0.8>"])
        torch.testing.assert_close(_unet_out(hooked, text), _unet_out(fused, "photo of zwx"), rtol=1e-4, atol=1e-5)
    finally:
        session.close()


def test_embedding_in_prompt_equals_loading_it(tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5)) * 0.02
    save_file({"clip_l": vectors}, str(folder / "zwxstyle.safetensors"))
    via_prompt = build_tiny_sd1_bundle(seed=0)
    generate(via_prompt, replace(P, prompt="photo in zwxstyle"), embeddings_dir=folder)  # registers it
    by_hand = build_tiny_sd1_bundle(seed=0)
    pipe = build_pipeline(by_hand)
    pipe.load_textual_inversion(vectors, token="zwxstyle", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    a, _ = encode_prompt(build_pipeline(via_prompt), via_prompt, "photo in zwxstyle")
    b, _ = encode_prompt(pipe, by_hand, "photo in zwxstyle")
    torch.testing.assert_close(a, b)
    c, _ = encode_prompt(pipe, by_hand, "photo in style")
    assert not torch.allclose(a, c)


def test_lora_at_one_differs_and_at_zero_is_base(loras: Path) -> None:
    bundle = build_tiny_sd1_bundle(seed=0)
    base = np.asarray(generate(bundle, P)[0].image)
    zero = np.asarray(generate(bundle, replace(P, prompt="photo of zwx <lora:a:0>"), lora_dir=loras)[0].image)
    one = np.asarray(generate(bundle, replace(P, prompt="photo of zwx <lora:a:1>"), lora_dir=loras)[0].image)
    assert np.array_equal(base, zero) and not np.array_equal(base, one)
