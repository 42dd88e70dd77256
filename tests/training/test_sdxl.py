"""SDXL end to end on the tiny SDXL model: pivotal tuning + LoRA, files that diffusers loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakiln.models.configured import ensure_tiny_model
from lorakiln.training.loop import train

SDXL = dict(model__pretrained_model="tiny:sdxl", train__max_train_steps=3,
            pivotal__train_text_encoder_ti=True, pivotal__token_abstraction="zwx")


@pytest.fixture(scope="module")
def sdxl_pipe_factory():
    from diffusers import StableDiffusionXLPipeline

    folder = ensure_tiny_model("sdxl")
    return lambda: StableDiffusionXLPipeline.from_pretrained(folder)


def _a1111_layer_names(single_file: Path) -> set[str]:
    """A1111's SDXL `network_layer_mapping` keys: module names of the SGM checkpoint with '.'→'_'
    (`model.diffusion_model.` → `diffusion_model_`, `conditioner.embedders.N.` → `N_`)."""
    names = set()
    with safe_open(str(single_file), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            module = key.rsplit(".", 1)[0]
            for prefix, short in (("model.diffusion_model.", "diffusion_model."),
                                  ("conditioner.embedders.", "")):
                if module.startswith(prefix):
                    names.add((short + module[len(prefix):]).replace(".", "_"))
    return names


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "base_layer", module)


def _module(pipe, component: str, path: str) -> torch.nn.Module:
    root = getattr(pipe, component)
    try:
        return _base_layer(root.get_submodule(path))
    except AttributeError:  # transformers >= 5: CLIPTextModel has no `text_model.` level
        return _base_layer(root.get_submodule(path.removeprefix("text_model.")))


@pytest.mark.parametrize("train_te", [False, True], ids=["unet-only", "with-text-encoders"])
def test_sdxl_pivotal_lora_loads_in_diffusers(run_config, sdxl_pipe_factory, library_warnings, tiny_sdxl_file,
                                              train_te) -> None:
    from lorakiln.models.family import SDXL as FAMILY
    from lorakiln.models.names.kohya import A1111_X_PROJ, a1111_compvis_name, kohya_to_diffusers_module

    cfg = run_config(network__network_train_unet_only=not train_te, **SDXL)
    result = train(cfg, progress=False)
    tensors = load_file(str(result.lora_path))
    names = sorted({k.split(".")[0] for k in tensors})
    te_names = [n for n in names if n.startswith("lora_te")]
    assert len(names) == 722 + (72 + 192 if train_te else 0)
    assert bool(te_names) == train_te
    assert all(n.startswith("lora_unet_input_blocks_") or n.startswith("lora_unet_middle_block_")
               or n.startswith("lora_unet_output_blocks_") or n.startswith("lora_te") for n in names)
    # Every name lands on a real module of the SGM single file by the A1111 rules (``load_network``).
    ldm = _a1111_layer_names(tiny_sdxl_file)
    for n in names:
        target = a1111_compvis_name(n)
        if target not in ldm and (m := A1111_X_PROJ.fullmatch(target)):
            target = m[1]
        assert target in ldm, (n, target)
    for layer in {n.rsplit("_self_attn_", 1)[0] for n in te_names if "_self_attn_" in n}:
        assert {f"{layer}_self_attn_{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")} <= set(names)
    with safe_open(str(result.lora_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

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
