"""Bundled SDXL configs, shape inference and SGM export at full size — on the meta device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from lorakiln.models.arch import sdxl_configs
from lorakiln.models.family import SDXL
from lorakiln.models.ldm_export import single_file_state_dict
from lorakiln.models.single_file import file_configs, text_state_dicts

U = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model."


@pytest.fixture(scope="module")
def sdxl() -> dict[str, Any]:
    """SDXL base components without memory (meta tensors) and their SGM-layout state dict."""
    from lorakiln.models.sdxl_random import build_sdxl_random

    bundle = build_sdxl_random(device="meta")
    ldm = single_file_state_dict(SDXL, bundle.unet, bundle.vae, bundle.text_encoders)
    return {"bundle": bundle, "ldm": ldm}


def count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts(sdxl: dict[str, Any]) -> None:
    """Published SDXL base sizes. OpenCLIP's bigG counts 694,659,841 with its `logit_scale`,
    which is not part of transformers' `CLIPTextModelWithProjection` (nor written by us)."""
    b = sdxl["bundle"]
    assert count(b.unet) == 2_567_463_684
    assert count(b.vae) == 83_653_863
    assert count(b.text_encoders[0]) == 123_060_480
    assert count(b.text_encoders[1]) == 694_659_841 - 1


def test_build_sdxl_random_meta(sdxl: dict[str, Any]) -> None:
    b = sdxl["bundle"]
    assert b.family is SDXL and b.name == "sdxl-random" and b.prediction_type == "epsilon"
    assert [type(te).__name__ for te in b.text_encoders] == list(SDXL.text_encoder_classes)
    assert b.unet.add_embedding.linear_1.in_features == 2816
    assert b.vae.config.scaling_factor == 0.13025 and b.vae_needs_fp32
    tok1, tok2 = b.tokenizers
    ids1 = tok1("a photo of a cat", padding="max_length").input_ids
    ids2 = tok2("a photo of a cat", padding="max_length").input_ids
    assert ids1[:7] == ids2[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids1[7:] == [49407] * 70 and ids2[7:] == [0] * 70  # tokenizer_2 pads with "!"
    assert b.noise_scheduler.config.beta_end == 0.012 and b.noise_scheduler.config.steps_offset == 1


def test_sgm_key_names(sdxl: dict[str, Any]) -> None:
    """The diffusers→SGM name map on real-size names. sd_xl_base_1.0 has 2515 tensors: these 2513 plus TE1's
    `position_ids` buffer and OpenCLIP's `logit_scale`."""
    ldm = sdxl["ldm"]
    assert len(ldm) == 1680 + 248 + 196 + 389
    shapes = {
        U + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        U + "input_blocks.4.1.proj_in.weight": (640, 640),  # linear projection: 2-D
        U + "input_blocks.7.0.skip_connection.weight": (1280, 640, 1, 1),
        U + "input_blocks.6.0.op.weight": (640, 640, 3, 3),
        U + "middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        U + "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),  # up_blocks.0 upsampler
        U + "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        U + "output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        U + "label_emb.0.0.weight": (1280, 2816),
        U + "label_emb.0.2.weight": (1280, 1280),
        TE1 + "encoder.layers.11.mlp.fc2.weight": (768, 3072),
        SDXL.single_file_marker: (1280,),
        TE2 + "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        TE2 + "transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
        TE2 + "positional_embedding": (77, 1280),
        TE2 + "token_embedding.weight": (49408, 1280),
        TE2 + "ln_final.weight": (1280,),
        TE2 + "text_projection": (1280, 1280),
    }
    for key, shape in shapes.items():
        assert tuple(ldm[key].shape) == shape, key
    assert not any(k.startswith((U + "input_blocks.9", U + "output_blocks.9")) for k in ldm)


def test_inferred_configs_equal_bundled(sdxl: dict[str, Any]) -> None:
    """Every width of SDXL base — incl. depths [1, 2, 10] and time-embed 256 — comes from shapes."""
    ref = sdxl_configs()
    got = file_configs(sdxl["ldm"], {}, None, "sdxl.safetensors", SDXL)
    # the file's config is inferred, not the bundled one's diffusers release
    assert got.unet == {k: v for k, v in ref.unet.items() if k != "_diffusers_version"}
    assert got.vae == ref.vae
    assert got.text_encoders == ref.text_encoders
    assert got.origin == "inferred from tensor shapes (sdxl defaults)"


def test_export_matches_diffusers_converters(sdxl: dict[str, Any]) -> None:
    """Our diffusers→SGM names invert diffusers' own SGM→diffusers conversion at full size."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    b, ldm = sdxl["bundle"], sdxl["ldm"]
    unet_sd = convert_ldm_unet_checkpoint(ldm, dict(b.unet.config))
    expected = b.unet.state_dict()
    assert unet_sd.keys() == expected.keys()
    assert all(unet_sd[k].shape == expected[k].shape for k in expected)
    for te_sd, encoder in zip(text_state_dicts(ldm, SDXL), b.text_encoders, strict=True):
        expected = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
        assert te_sd.keys() == expected.keys()
        assert all(te_sd[k].shape == expected[k].shape for k in expected)


def test_tiny_file_has_the_real_key_names(sdxl: dict[str, Any], tiny_sdxl_file: Path) -> None:
    """The tiny SDXL differs from the real one in widths only: same tensor names."""
    with safe_open(str(tiny_sdxl_file), "pt") as fh:
        tiny_keys = set(fh.keys())
    assert tiny_keys == set(sdxl["ldm"])
