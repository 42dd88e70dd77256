"""Issue-4 numeric checks on tiny SD 1.x and SDXL: `<lora:x:0>` is the base image bit for bit and
`<lora:x:1>` differs; strength 0.5 equals a fused LoRA at 0.5; stacked LoRAs add up; an embedding
in the prompt changes the conditioning exactly as loading it does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorakiln.inference.generate import LoRASet, generate
from lorakiln.inference.infotext import GenerationParams
from lorakiln.inference.pipeline import build_pipeline
from lorakiln.inference.weighting import encode_prompt
from lorakiln.models.family import SD1, SDXL, ModelFamily
from lorakiln.models.names.kohya import kohya_to_diffusers_module
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle
from lorakiln.networks.export import read_lora_file, save_kohya_lora
from lorakiln.networks.lora import delta_weight
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

P = GenerationParams(prompt="photo of zwx", steps=3, sampler="Euler", cfg_scale=5, seed=11, width=64, height=64,
                     schedule_type=None)

FAMILIES: dict[str, tuple[ModelFamily, Callable[..., Any]]] = {
    "sd1": (SD1, build_tiny_sd1_bundle),
    "sdxl": (SDXL, build_tiny_sdxl_bundle),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


def _build(family: str) -> Any:
    return FAMILIES[family][1](seed=0)


def _save_lora(folder: Path, family: str, name: str, seed: int) -> Path:
    source = _build(family)
    net = create_lora_network(source.unet, source.text_encoders, FAMILIES[family][0], dim=2, alpha=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.2)
    path = save_kohya_lora(net, folder / f"{name}.safetensors", build_metadata(TrainingInfo(output_name=name), net),
                           dtype="float")
    net.remove()
    return path


def _fuse(bundle: Any, path: Path, strength: float) -> int:
    """Add strength·(alpha/dim)·up@down into the weights by hand; returns the modules patched."""
    tensors, _ = read_lora_file(path)
    names = {k.split(".")[0] for k in tensors}
    with torch.no_grad():
        for key in names:
            component, sub = kohya_to_diffusers_module(key, bundle.family)
            if component == "unet":
                module = bundle.unet.get_submodule(sub)
            else:
                encoder = bundle.text_encoders[bundle.family.te_diffusers_prefixes.index(component)]
                try:
                    module = encoder.get_submodule(sub)
                except AttributeError:  # transformers >= 5.6 CLIPTextModel has no text_model level
                    module = encoder.get_submodule(sub.removeprefix("text_model."))
            down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
            module.weight += strength * delta_weight(up, down, float(tensors[f"{key}.alpha"]) / down.shape[0],
                                                     module.weight.shape)
    return len(names)


def _unet_out(bundle: Any, prompt: str) -> torch.Tensor:
    """One U-Net call on fixed latents with the prompt's conditioning (SDXL: pooled + time ids)."""
    pipe = build_pipeline(bundle)
    hidden, pooled = encode_prompt(pipe, bundle, prompt)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    extra = {}
    if bundle.family.uses_time_ids:
        extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                      "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        return bundle.unet(x, torch.tensor([400]), hidden, **extra).sample


@pytest.fixture(scope="module")
def loras(tmp_path_factory, family: str) -> Path:
    folder = tmp_path_factory.mktemp(f"loras-{family}")
    _save_lora(folder, family, "a", 1)
    _save_lora(folder, family, "b", 2)
    return folder


def test_half_strength_and_two_loras_equal_fused_weights(loras: Path, family: str) -> None:
    hooked, fused = _build(family), _build(family)
    patched = _fuse(fused, loras / "a.safetensors", 0.5)
    _fuse(fused, loras / "b.safetensors", 0.8)
    te_modules = sum(1 for k in read_lora_file(loras / "a.safetensors")[0] if k.startswith("lora_te")) // 3
    assert patched > te_modules > 0  # both the U-Net and every text encoder are patched
    session = LoRASet(hooked, loras)
    try:
        [half] = session.activate(["photo of zwx <lora:a:0.5>"])
        single = _unet_out(hooked, half)
    finally:
        session.close()
    half_fused = _build(family)
    _fuse(half_fused, loras / "a.safetensors", 0.5)
    torch.testing.assert_close(single, _unet_out(half_fused, "photo of zwx"), rtol=1e-4, atol=1e-5)
    session = LoRASet(hooked, loras)
    try:
        [text] = session.activate(["photo of zwx <lora:a:0.5> <lora:b:0.8>"])
        both = _unet_out(hooked, text)
    finally:
        session.close()
    torch.testing.assert_close(both, _unet_out(fused, "photo of zwx"), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both, single)  # the second LoRA does contribute


def test_embedding_in_prompt_equals_loading_it(tmp_path: Path, family: str) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    via_prompt, by_hand = _build(family), _build(family)
    gen = torch.Generator().manual_seed(5)
    widths = [te.get_input_embeddings().weight.shape[1] for te in by_hand.text_encoders]
    vectors = {key: torch.randn(2, w, generator=gen) * 0.02
               for key, w in zip(FAMILIES[family][0].ti_file_keys, widths, strict=True)}
    save_file(vectors, str(folder / "zwxstyle.safetensors"))
    generate(via_prompt, replace(P, prompt="photo in zwxstyle"), embeddings_dir=folder)  # registers it
    pipe = build_pipeline(by_hand)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    for vec, encoder, tokenizer in zip(vectors.values(), encoders, tokenizers, strict=True):
        pipe.load_textual_inversion(vec, token="zwxstyle", text_encoder=encoder, tokenizer=tokenizer)
    a, pooled_a = encode_prompt(build_pipeline(via_prompt), via_prompt, "photo in zwxstyle")
    b, pooled_b = encode_prompt(pipe, by_hand, "photo in zwxstyle")
    torch.testing.assert_close(a, b)
    if family == "sdxl":
        torch.testing.assert_close(pooled_a, pooled_b)
    c, _ = encode_prompt(pipe, by_hand, "photo in style")
    assert not torch.allclose(a, c)


def test_lora_at_one_differs_and_at_zero_is_base(loras: Path, family: str) -> None:
    bundle = _build(family)
    base = np.asarray(generate(bundle, P)[0].image)
    zero = np.asarray(generate(bundle, replace(P, prompt="photo of zwx <lora:a:0>"), lora_dir=loras)[0].image)
    one = np.asarray(generate(bundle, replace(P, prompt="photo of zwx <lora:a:1>"), lora_dir=loras)[0].image)
    assert np.array_equal(base, zero) and not np.array_equal(base, one)
