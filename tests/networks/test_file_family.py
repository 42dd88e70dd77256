"""One family rule for every reader of a LoRA file (generation, lora info, convert, merges)."""

from __future__ import annotations

from lorakiln.networks.file_family import detect_family

SDXL_UNET_ONLY = "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q"
SD1_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def test_tensor_names_and_module_names_give_the_same_family() -> None:
    modules = [SDXL_UNET_ONLY]
    tensors = [f"{SDXL_UNET_ONLY}.lora_down.weight", f"{SDXL_UNET_ONLY}.lora_up.weight", f"{SDXL_UNET_ONLY}.alpha"]
    assert detect_family(modules, {})[0] == detect_family(tensors, {})[0] == "sdxl"


def test_keys_win_over_metadata_and_metadata_decides_the_rest() -> None:
    family, _, notes = detect_family([f"{SD1_TE}.lora_down.weight"], {"ss_base_model_version": "sdxl_base_v1-0"})
    assert family == "sd1" and "trusting the keys" in notes[0]
    assert detect_family([f"{SD1_TE}.lora_down.weight"], {"ss_v2": "True"})[0] == "sd2"  # SD 2.x shares SD1's names
    assert detect_family(["lora_unet_mystery.lora_down.weight"], {"ss_base_model_version": "sd_v1"})[0] == "sd1"
    assert detect_family(["lora_unet_mystery.lora_down.weight"], {}) == (None, "", [])
