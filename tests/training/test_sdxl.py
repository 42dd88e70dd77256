"""SDXL end to end on the tiny SDXL model: pivotal tuning + LoRA, files that diffusers loads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakiln.training.loop import train

SDXL = dict(model__pretrained_model="tiny:sdxl", train__max_train_steps=3,
            pivotal__train_text_encoder_ti=True, pivotal__token_abstraction="zwx")


@pytest.fixture(scope="module")
def sdxl_pipe_factory():
    from diffusers import StableDiffusionXLPipeline

    folder = Path(os.environ["LORAKILN_HOME"]) / "models" / "tiny-sdxl-seed0"
    return lambda: StableDiffusionXLPipeline.from_pretrained(folder)


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "base_layer", module)


def _module(pipe, component: str, path: str) -> torch.nn.Module:
    root = getattr(pipe, component)
    try:
        return _base_layer(root.get_submodule(path))
    except AttributeError:  # transformers >= 5: CLIPTextModel has no `text_model.` level
        return _base_layer(root.get_submodule(path.removeprefix("text_model.")))


@pytest.mark.parametrize("train_te", [False, True], ids=["unet-only", "with-text-encoders"])
def test_sdxl_pivotal_lora_loads_in_diffusers(run_config, sdxl_pipe_factory, library_warnings, train_te) -> None:
    from lorakiln.models.family import SDXL as FAMILY
    from lorakiln.networks.keymap import a1111_compvis_name, kohya_to_diffusers_module

    cfg = run_config(network__network_train_unet_only=not train_te, **SDXL)
    result = train(cfg, progress=False)
    tensors = load_file(str(result.lora_path))
    names = sorted({k.split(".")[0] for k in tensors})
    te_names = [n for n in names if n.startswith("lora_te")]
    assert len(names) == 722 + (72 + 192 if train_te else 0)
    assert bool(te_names) == train_te
    assert all(n.startswith("lora_unet_input_blocks_") or n.startswith("lora_unet_middle_block_")
               or n.startswith("lora_unet_output_blocks_") or n.startswith("lora_te") for n in names)
    for n in names:  # SGM names map to real modules by the A1111 rules (lora_unet -> diffusion_model)
        assert a1111_compvis_name(n)

    pipe = sdxl_pipe_factory()
    targets = {n: _module(pipe, *kohya_to_diffusers_module(n, FAMILY)) for n in names}
    before = {n: m.weight.detach().clone() for n, m in targets.items()}
    pipe.load_lora_weights(str(result.lora_path))
    # "No LoRA keys associated to CLIPTextModel" is diffusers' note for a U-Net-only file; what
    # must never appear are missing/unexpected keys.
    assert not [r.getMessage() for r in library_warnings
                if re.search(r"(unexpected|missing) keys", r.getMessage(), re.I)]
    pipe.fuse_lora(lora_scale=1.0)
    for n, m in targets.items():
        down, up = tensors[f"{n}.lora_down.weight"].float(), tensors[f"{n}.lora_up.weight"].float()
        expected = (tensors[f"{n}.alpha"].float() / down.shape[0]) * (up.flatten(1) @ down.flatten(1))
        torch.testing.assert_close(m.weight.detach() - before[n], expected.reshape(before[n].shape),
                                   rtol=2e-3, atol=2e-3 * expected.abs().max().item() + 1e-7, msg=n)

    emb = load_file(str(result.lora_path.with_name("last_emb.safetensors")))
    assert set(emb) == {"clip_l", "clip_g"}
    fresh = sdxl_pipe_factory()
    fresh.load_textual_inversion(emb["clip_l"], token=["<s0>", "<s1>"], text_encoder=fresh.text_encoder,
                                 tokenizer=fresh.tokenizer)
    fresh.load_textual_inversion(emb["clip_g"], token=["<s0>", "<s1>"], text_encoder=fresh.text_encoder_2,
                                 tokenizer=fresh.tokenizer_2)
    for tok, enc, key in ((fresh.tokenizer, fresh.text_encoder, "clip_l"),
                          (fresh.tokenizer_2, fresh.text_encoder_2, "clip_g")):
        ids = tok("photo of <s0><s1>").input_ids
        vectors = enc.get_input_embeddings().weight[ids[3:5]].detach()
        torch.testing.assert_close(vectors, emb[key].float())


def test_sdxl_validation_renders(run_config) -> None:
    cfg = run_config(validation__validation_prompt="photo of zwx", validation__validation_inference_steps=2,
                     validation__num_validation_images=1, validation__validation_resolution=64, **SDXL)
    train(cfg, progress=False)
    assert len(list((Path(cfg.output.output_dir) / "validation").glob("*.png"))) == 1
