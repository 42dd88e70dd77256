"""SDXL through `load_base_model`: diffusers folder, SGM single file, `tiny:sdxl`, hub id, VAE override."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakiln.errors import ModelLoadError
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.family import SDXL
from lorakiln.models.loading import load_base_model, sha256_file
from lorakiln.models.tiny_sdxl import TINY_SDXL_POOLED_DIM

TE2 = "conditioner.embedders.1.model."


def assert_state_equal(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=atol), key


def assert_bundles_equal(a: ModelBundle, b: ModelBundle) -> None:
    assert a.family is b.family is SDXL
    assert_state_equal(a.unet, b.unet)
    assert_state_equal(a.vae, b.vae)
    assert len(a.text_encoders) == len(b.text_encoders) == 2
    for ta, tb in zip(a.text_encoders, b.text_encoders, strict=True):
        assert type(ta) is type(tb)
        assert_state_equal(ta, tb)
    text = "a photo of a cat"
    for ka, kb in zip(a.tokenizers, b.tokenizers, strict=True):
        assert ka(text, padding="max_length").input_ids == kb(text, padding="max_length").input_ids


@pytest.fixture(scope="module")
def folder_bundle(tiny_sdxl_dir: Path) -> ModelBundle:
    return load_base_model(tiny_sdxl_dir)


def test_folder_load(folder_bundle: ModelBundle, tiny_sdxl_dir: Path) -> None:
    b = folder_bundle
    assert b.family is SDXL and b.name == tiny_sdxl_dir.name and b.sha256 is None
    assert [type(te).__name__ for te in b.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert [t.pad_token for t in b.tokenizers] == ["<|endoftext|>", "!"]
    assert b.tokenizers[1].pad_token_id == 0
    # Real SDXL's legacy ids: pooling at the highest token id (EOS), as for the real model.
    assert [te.config.eos_token_id for te in b.text_encoders] == [2, 2]
    # The folder saved SDXL's Euler scheduler; training gets DDPM with the same betas.
    assert type(b.noise_scheduler).__name__ == "DDPMScheduler"
    assert b.noise_scheduler.config.beta_schedule == "scaled_linear" and b.prediction_type == "epsilon"
    assert b.vae.config.scaling_factor == 0.13025 and b.vae_needs_fp32
    assert b.unet.config.transformer_layers_per_block == [1, 2, 10]
    assert not b.unet.training and not b.text_encoders[1].training


def test_single_file_equals_folder(folder_bundle: ModelBundle, tiny_sdxl_file: Path) -> None:
    b = load_base_model(tiny_sdxl_file)
    assert b.name == "tiny-sdxl" and b.extra["format"] == "single_file"
    assert b.sha256 == sha256_file(tiny_sdxl_file)
    assert_bundles_equal(folder_bundle, b)
    ids = torch.tensor([b.tokenizers[1]("a red cat", padding="max_length").input_ids])
    with torch.no_grad():
        ref, got = folder_bundle.text_encoders[1](ids), b.text_encoders[1](ids)
    assert got.text_embeds.shape == (1, TINY_SDXL_POOLED_DIM)
    assert torch.allclose(ref.text_embeds, got.text_embeds, atol=1e-6)


def test_single_file_layout(tiny_sdxl_file: Path) -> None:
    """TE2 in OpenCLIP layout: fused q/k/v, transposed projection, no HF names."""
    with safe_open(str(tiny_sdxl_file), "pt") as fh:
        keys = set(fh.keys())
        in_proj = fh.get_slice(TE2 + "transformer.resblocks.0.attn.in_proj_weight").get_shape()
        proj = fh.get_slice(TE2 + "text_projection").get_shape()
    assert SDXL.single_file_marker in keys
    assert in_proj == [3 * 64, 64] and proj == [64, TINY_SDXL_POOLED_DIM]
    assert not any(k.startswith(TE2) and ("q_proj" in k or "text_model" in k) for k in keys)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys


def test_tiny_source_equals_folder(folder_bundle: ModelBundle) -> None:
    b = load_base_model("tiny:sdxl")
    assert b.name == "tiny-sdxl" and b.source == "tiny:sdxl"
    assert_bundles_equal(folder_bundle, b)
    with pytest.raises(ModelLoadError, match=r"tiny:sd3.*tiny:sd1, tiny:sdxl"):
        load_base_model("tiny:sd3")


def test_half_file_loads_as_float32(folder_bundle: ModelBundle, tmp_path: Path) -> None:
    from lorakiln.models.ldm_export import save_sgm_single_file
    from lorakiln.models.tiny import TINY_TOKENIZER_NAME

    a = folder_bundle
    path = save_sgm_single_file(tmp_path / "half.safetensors", a.unet, a.vae, a.text_encoders,
                                dtype=torch.float16, tokenizer_name=TINY_TOKENIZER_NAME)
    b = load_base_model(path, dtype=torch.bfloat16)
    assert {p.dtype for te in b.text_encoders for p in te.parameters()} == {torch.bfloat16}
    b = load_base_model(path)
    k_proj = a.text_encoders[1].text_model.encoder.layers[3].self_attn.k_proj.weight
    assert torch.equal(b.text_encoders[1].text_model.encoder.layers[3].self_attn.k_proj.weight,
                       k_proj.half().float())


def test_metadata_free_file_needs_config_dir(folder_bundle: ModelBundle, tiny_sdxl_file: Path,
                                             tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(tiny_sdxl_file), bare)  # same tensors, no lorakiln metadata
    with pytest.raises(ModelLoadError, match=r"norm_num_groups=32.*config_dir"):
        load_base_model(bare)
    b = load_base_model(bare, config_dir=tiny_sdxl_dir)
    assert b.extra["configs"] == str(tiny_sdxl_dir)
    assert_bundles_equal(folder_bundle, b)
    assert b.tokenizers[1].pad_token == "!"  # from config_dir/tokenizer_2
    # One `tokenizer=` folder serves both encoders, each with SDXL's pad token.
    configs = shutil.copytree(tiny_sdxl_dir, tmp_path / "configs", ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(ModelLoadError, match=r"658-token.*tokenizer="):
        load_base_model(bare, config_dir=configs)
    b = load_base_model(bare, config_dir=configs, tokenizer=tiny_sdxl_dir / "tokenizer")
    assert [t.pad_token for t in b.tokenizers] == ["<|endoftext|>", "!"]


def test_incomplete_sdxl_file(tiny_sdxl_file: Path, tmp_path: Path) -> None:
    sd = load_file(tiny_sdxl_file)
    no_te1 = {k: v for k, v in sd.items() if not k.startswith("conditioner.embedders.0.")}
    save_file(no_te1, tmp_path / "no-te1.safetensors")
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion 1.x or SDXL checkpoint.*conditioner"):
        load_base_model(tmp_path / "no-te1.safetensors")
    with safe_open(str(tiny_sdxl_file), "pt") as fh:
        metadata = fh.metadata()
    del sd[TE2 + "transformer.resblocks.4.attn.out_proj.weight"]
    save_file(sd, tmp_path / "holed.safetensors", metadata=metadata)
    with pytest.raises(ModelLoadError, match=r"text_encoder_2 of .*holed.*1 missing: text_model\.encoder\.layers\.4"):
        load_base_model(tmp_path / "holed.safetensors")


def test_vae_override(tiny_sdxl_file: Path, tmp_path: Path) -> None:
    """An fp16-fix style VAE (folder or LDM single file) replaces the model's; `force_upcast: false` is honoured."""
    from diffusers import AutoencoderKL

    from lorakiln.models.ldm_export import vae_to_ldm
    from lorakiln.models.tiny_sdxl import TINY_SDXL_VAE_CONFIG

    torch.manual_seed(7)
    fixed = AutoencoderKL(**{**TINY_SDXL_VAE_CONFIG, "force_upcast": False}).eval()
    fixed.save_pretrained(tmp_path / "vae-fix")
    b = load_base_model(tiny_sdxl_file, vae=tmp_path / "vae-fix")
    assert_state_equal(b.vae, fixed)
    assert b.extra["vae"] == str(tmp_path / "vae-fix") and not b.vae_needs_fp32
    vae_file = tmp_path / "vae-fix.safetensors"
    save_file({k.removeprefix("first_stage_model."): v.contiguous()
               for k, v in vae_to_ldm(fixed.state_dict(), fixed.config).items()}, vae_file)
    b = load_base_model(tiny_sdxl_file, vae=vae_file)
    assert_state_equal(b.vae, fixed)
    assert b.vae.config.scaling_factor == 0.13025  # not in the weights: from the base model's VAE


def test_hub_id_uses_snapshot(tiny_sdxl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              folder_bundle: ModelBundle) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append(kwargs)
        return str(tiny_sdxl_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.chdir(tmp_path)
    b = load_base_model("someorg/tiny-sdxl", local_files_only=True)
    assert b.family is SDXL and b.name == "someorg/tiny-sdxl"
    (kwargs,) = calls
    assert {"text_encoder_2/*", "tokenizer_2/*"} <= set(kwargs["allow_patterns"])  # type: ignore[arg-type]
    assert_state_equal(b.text_encoders[1], folder_bundle.text_encoders[1])


def test_folder_missing_text_encoder_2(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_sdxl_dir, tmp_path / "broken", ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(ModelLoadError, match=r"broken.*text_encoder_2"):
        load_base_model(folder)
