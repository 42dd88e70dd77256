"""Family detection from single-file keys and diffusers configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from lorakiln.errors import ModelLoadError
from lorakiln.models.detect import detect_family, detect_family_from_config
from lorakiln.models.family import SD1

SD1_MARKER = SD1.single_file_marker


def test_tiny_file_is_sd1(tiny_sd1_file: Path) -> None:
    with safe_open(str(tiny_sd1_file), "pt") as fh:
        assert detect_family(list(fh.keys())) is SD1


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([SD1_MARKER, "cond_stage_model.model.ln_final.bias"], "2.x"),
        ([SD1_MARKER], "not the text encoders"),
        (["conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"], "SDXL refiner"),
        (["encoder.down.0.block.0.conv1.weight"], "VAE alone"),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["foo.weight"], "foo.weight"),
    ],
)
def test_other_files_are_named(keys: list[str], expected: str) -> None:
    with pytest.raises(ModelLoadError, match="x.safetensors is not a Stable Diffusion 1.x or SDXL") as err:
        detect_family(keys, source="x.safetensors")
    assert expected in str(err.value)


def test_folder_config_detection() -> None:
    from lorakiln.models.tiny import TINY_UNET_CONFIG

    assert detect_family_from_config(TINY_UNET_CONFIG, pipeline_class="StableDiffusionPipeline") is SD1
    assert detect_family_from_config(TINY_UNET_CONFIG) is SD1  # no model_index.json
    with pytest.raises(ModelLoadError, match="2.x"):
        detect_family_from_config({**TINY_UNET_CONFIG, "use_linear_projection": True}, source="sd2")
    with pytest.raises(ModelLoadError, match="StableDiffusionXLPipeline"):  # SD1 U-Net, SDXL pipeline
        detect_family_from_config(TINY_UNET_CONFIG, pipeline_class="StableDiffusionXLPipeline")
