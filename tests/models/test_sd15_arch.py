"""Bundled SD 1.5 configs, shape inference and LDM export at full size — on the meta device."""

from __future__ import annotations

from typing import Any

import pytest

from lorakiln.models.arch import infer_text_config, infer_unet_config, infer_vae_config, sd15_configs
from lorakiln.models.ldm_export import UNET_PREFIX, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
from lorakiln.models.single_file import VAE_PREFIXES, empty_model, strip_prefix, text_state_dicts


@pytest.fixture(scope="module")
def sd15() -> dict[str, Any]:
    """SD 1.5 components without memory (meta tensors) and their LDM-layout state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c = sd15_configs()
    unet = empty_model(lambda: UNet2DConditionModel.from_config(c.unet))
    vae = empty_model(lambda: AutoencoderKL.from_config(c.vae))
    te = empty_model(lambda: CLIPTextModel(CLIPTextConfig.from_dict(c.text_encoder)))
    ldm = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
           **text_encoder_to_ldm(te.state_dict())}
    return {"configs": c, "unet": unet, "vae": vae, "te": te, "ldm": ldm}


def test_parameter_counts(sd15: dict[str, Any]) -> None:
    """The published SD 1.5 sizes: 859.5 M U-Net, 83.7 M VAE, 123.1 M CLIP-L text encoder."""
    def count(m: Any) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(sd15["unet"]) == 859_520_964
    assert count(sd15["vae"]) == 83_653_863
    assert count(sd15["te"]) == 123_060_480
    assert sd15["unet"].conv_in.weight.shape == (320, 4, 3, 3)
    assert sd15["te"].embeddings.token_embedding.weight.shape == (49408, 768)


def test_ldm_key_names(sd15: dict[str, Any]) -> None:
    """Spot checks of the diffusers→LDM name map on real-size names; key count of a pruned SD 1.5 file."""
    ldm = sd15["ldm"]
    assert len(ldm) == 686 + 248 + 196
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.6.0.op.weight",  # down_blocks.1.downsamplers.0
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # up_blocks.0 (no attention)
        "model.diffusion_model.output_blocks.5.2.conv.weight",  # up_blocks.1 (attention)
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",  # diffusers up_blocks.0
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.block_2.conv2.weight",
        "first_stage_model.encoder.norm_out.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.out_proj.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in ldm, key
    assert tuple(ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(ldm["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"].shape) == (128, 256, 1, 1)


def test_inferred_configs_equal_bundled(sd15: dict[str, Any]) -> None:
    c, ldm = sd15["configs"], sd15["ldm"]
    unet = infer_unet_config(strip_prefix(ldm, (UNET_PREFIX,)), c.unet)
    assert {k: v for k, v in unet.items() if c.unet.get(k) != v} == {
        "use_linear_projection": False, "transformer_layers_per_block": 1}
    assert infer_vae_config(strip_prefix(ldm, VAE_PREFIXES), c.vae) == c.vae
    assert infer_text_config(text_state_dicts(ldm)[0], c.text_encoder, {}) == c.text_encoder


def test_export_matches_diffusers_converter(sd15: dict[str, Any]) -> None:
    """Our diffusers→LDM names invert diffusers' own LDM→diffusers conversion at full size."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    c, ldm = sd15["configs"], sd15["ldm"]
    unet_sd = convert_ldm_unet_checkpoint(ldm, dict(sd15["unet"].config))
    assert unet_sd.keys() == sd15["unet"].state_dict().keys()
    vae_sd = convert_ldm_vae_checkpoint(ldm, c.vae)
    expected = sd15["vae"].state_dict()
    assert vae_sd.keys() == expected.keys()
    assert all(vae_sd[k].shape == expected[k].shape for k in expected)


def test_build_sd15_random_meta() -> None:
    from lorakiln.models.sd15_random import build_sd15_random

    b = build_sd15_random(device="meta")
    assert b.unet.config.block_out_channels == (320, 640, 1280, 1280) or \
        list(b.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert b.text_encoders[0].config.hidden_size == 768
    assert len(b.tokenizers[0]) == 49408
    assert b.prediction_type == "epsilon"
