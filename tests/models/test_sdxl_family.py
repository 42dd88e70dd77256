"""The SDXL `ModelFamily` record: detection, and its conditioning facts checked against diffusers.

The last tests build SDXL's U-Net conditioning from family data alone — the way a trainer
without `if sdxl` does — and compare it with `StableDiffusionXLPipeline.encode_prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from lorakiln.errors import ModelLoadError
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.detect import detect_family, detect_family_from_config
from lorakiln.models.family import FAMILIES, SD1, SDXL, get_family
from lorakiln.models.tiny import TINY_UNET_CONFIG
from lorakiln.models.tiny_sdxl import TINY_SDXL_UNET_CONFIG


def test_family_records() -> None:
    assert get_family("sdxl") is SDXL and set(FAMILIES) == {"sd1", "sdxl"}
    assert SDXL.base_model_version == "sdxl_base_v1-0" and SDXL.ss_v2 == "False"
    assert SDXL.modelspec_lora_architecture == "stable-diffusion-xl-v1-base/lora"
    assert SDXL.modelspec_implementation == "https://github.com/Stability-AI/generative-models"
    assert SDXL.default_resolution == 1024 and SDXL.unet_key_style == "sgm"
    assert SDXL.te_lora_prefixes == ("lora_te1", "lora_te2")
    assert SDXL.te_diffusers_prefixes == ("text_encoder", "text_encoder_2")
    assert SDXL.uses_pooled_text and SDXL.uses_time_ids and SDXL.vae_fp16_unsafe
    assert not (SD1.uses_pooled_text or SD1.uses_time_ids or SD1.vae_fp16_unsafe)
    # Every per-encoder tuple has one entry per text encoder.
    for family in FAMILIES.values():
        per_encoder = (family.te_lora_prefixes, family.te_single_file_prefixes, family.text_encoder_classes,
                       family.te_single_file_layouts, family.tokenizer_subfolders, family.tokenizer_pad_tokens,
                       family.ti_file_keys)
        assert {len(t) for t in per_encoder} == {family.num_text_encoders}, family.name
    # The key map's SGM up-level table is keyed by the family name.
    from lorakiln.models.names.ldm import UP_ATTENTION_LEVELS

    assert UP_ATTENTION_LEVELS[SDXL.name] == frozenset({0, 1})


def test_detection(tiny_sdxl_file: Path, tiny_sd1_file: Path) -> None:
    with safe_open(str(tiny_sdxl_file), "pt") as fh:
        assert detect_family(list(fh.keys())) is SDXL
    with safe_open(str(tiny_sd1_file), "pt") as fh:
        assert detect_family(list(fh.keys())) is SD1
    assert detect_family_from_config(TINY_SDXL_UNET_CONFIG, pipeline_class="StableDiffusionXLPipeline") is SDXL
    assert detect_family_from_config(TINY_SDXL_UNET_CONFIG) is SDXL  # no model_index.json
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline"):
        detect_family_from_config(TINY_SDXL_UNET_CONFIG, pipeline_class="StableDiffusionPipeline")
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_family_from_config(TINY_SDXL_UNET_CONFIG, pipeline_class="StableDiffusionXLImg2ImgPipeline")
    with pytest.raises(ModelLoadError, match="2.x"):
        detect_family_from_config({**TINY_UNET_CONFIG, "use_linear_projection": True})


def family_conditioning(bundle: ModelBundle, prompts: list[str], size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """`encoder_hidden_states` and `added_cond_kwargs` from `ModelFamily` data only."""
    family = bundle.family
    states, pooled = [], None
    for index, (tok, encoder) in enumerate(zip(bundle.tokenizers, bundle.text_encoders, strict=True)):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[family.te_hidden_state_index]
        if family.te_final_layer_norm:
            text_model = getattr(encoder, "text_model", encoder)
            hidden = text_model.final_layer_norm(hidden)
        states.append(hidden)
        if index == family.pooled_text_encoder_index:
            pooled = out.text_embeds
    added: dict[str, Any] = {}
    if family.uses_pooled_text:
        added["text_embeds"] = pooled
    if family.uses_time_ids:  # original size, crop top-left, target size
        added["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), dtype=torch.float32)
    return torch.cat(states, dim=-1), added


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, add_watermarker=False)


def test_family_conditioning_matches_diffusers(pipe: Any, tiny_sdxl_dir: Path) -> None:
    from lorakiln.models.loading import load_base_model

    bundle = load_base_model(tiny_sdxl_dir)
    prompts = ["a photo of zwx dog", "an oil painting of a red cat"]
    with torch.no_grad():
        hidden, added = family_conditioning(bundle, prompts, 64)
        ref_hidden, _, ref_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
        ref_time_ids = pipe._get_add_time_ids(
            (64, 64), (0, 0), (64, 64), dtype=torch.float32,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        )
        assert hidden.shape == (2, 77, bundle.unet.config.cross_attention_dim)
        assert torch.allclose(hidden, ref_hidden, atol=1e-6)
        assert torch.allclose(added["text_embeds"], ref_pooled, atol=1e-6)
        assert torch.equal(added["time_ids"][:1], ref_time_ids)
        noise = bundle.unet(torch.randn(2, 4, 8, 8), 10, hidden, added_cond_kwargs=added).sample
    assert noise.shape == (2, 4, 8, 8) and torch.isfinite(noise).all()


def test_pipeline_generates(pipe: Any) -> None:
    """A diffusers SDXL pipeline loads the tiny folder and samples 2 steps at 64 px."""
    out = pipe("a photo of zwx dog", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    image = out.images
    assert image.shape == (1, 64, 64, 3)
    assert (image >= 0).all() and (image <= 1).all()
