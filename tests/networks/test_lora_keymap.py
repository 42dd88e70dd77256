"""Key map: kohya sd-scripts names, A1111 resolution (``load_network``) onto LDM names, SGM names.

The A1111 rule table and the diffusers→LDM table are two independent encodings of the client
rules; agreeing on every name is the check that our files land on real LDM modules.
"""

from __future__ import annotations

import pytest
import torch
from networks_support import SGM_FAMILY
from torch import nn

from lorakiln.models.family import SD1
from lorakiln.models.names import kohya as keymap
from lorakiln.models.tiny import TinyComponents
from lorakiln.networks.network import LoRANetwork, create_lora_network


def test_sd1_examples_from_formats_md() -> None:
    # kohya sd-scripts SD1.x U-Net and text-encoder key names
    cases = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "down_blocks.0.attentions.0.proj_in": "lora_unet_down_blocks_0_attentions_0_proj_in",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0":
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj":
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
    }  # fmt: skip
    for path, key in cases.items():
        assert keymap.unet_kohya_name(path, SD1) == key
        assert keymap.kohya_to_diffusers_module(key, SD1) == ("unet", path)
    # transformers ≥ 5.6 path (no text_model level) and the classic one give the same key
    for path in ("encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.q_proj"):
        assert (
            keymap.text_encoder_kohya_name(path, 0, SD1)
            == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        )
    assert keymap.text_encoder_kohya_name("encoder.layers.11.mlp.fc2", 0, SD1) == (
        "lora_te_text_model_encoder_layers_11_mlp_fc2"
    )


def test_peft_names() -> None:
    assert keymap.peft_module_name(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", SD1
    ) == ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert keymap.peft_module_name(
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0", SD1
    ) == ("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0")
    assert keymap.peft_module_name("lora_te_text_model_encoder_layers_3_self_attn_out_proj", SD1) == (
        "text_encoder.text_model.encoder.layers.3.self_attn.out_proj"
    )
    with pytest.raises(KeyError):
        keymap.kohya_to_diffusers_module("lora_te2_text_model_encoder_layers_0_mlp_fc1", SD1)


def test_a1111_rule_table_examples() -> None:
    cases = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": "diffusion_model_input_blocks_1_1_proj_in",
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k":
            "diffusion_model_input_blocks_8_1_transformer_blocks_0_attn2_to_k",
        "lora_unet_mid_block_attentions_0_proj_out": "diffusion_model_middle_block_1_proj_out",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2":
            "diffusion_model_output_blocks_11_1_transformer_blocks_0_ff_net_2",
        "lora_unet_down_blocks_1_resnets_0_conv1": "diffusion_model_input_blocks_4_0_in_layers_2",
        "lora_unet_mid_block_resnets_1_time_emb_proj": "diffusion_model_middle_block_2_emb_layers_1",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "diffusion_model_output_blocks_2_1_conv",
        "lora_unet_up_blocks_2_upsamplers_0_conv": "diffusion_model_output_blocks_8_2_conv",
        "lora_unet_down_blocks_1_downsamplers_0_conv": "diffusion_model_input_blocks_6_0_op",
        "lora_te_text_model_encoder_layers_5_mlp_fc1": "transformer_text_model_encoder_layers_5_mlp_fc1",
    }  # fmt: skip
    for key, ldm in cases.items():
        assert keymap.a1111_compvis_name(key) == ldm


def _sd1_ldm_set(tiny: TinyComponents) -> set[str]:
    return keymap.sd1_ldm_module_names(
        (n for n, _ in tiny.unet.named_modules()), (n for n, _ in tiny.text_encoder.named_modules())
    )


def test_every_key_lands_on_a_real_ldm_module(tiny_sd1: TinyComponents, network: LoRANetwork) -> None:
    ldm = _sd1_ldm_set(tiny_sd1)
    assert "diffusion_model_output_blocks_11_1_transformer_blocks_0_attn2_to_out_0" in ldm
    assert "transformer_text_model_encoder_layers_11_self_attn_out_proj" in ldm
    missing = [k for k in network if keymap.a1111_compvis_name(k) not in ldm]
    assert not missing, missing[:5]


def test_a1111_table_agrees_with_ldm_table_beyond_attention(tiny_sd1: TinyComponents) -> None:
    """Resnets, down/upsamplers (future LoCon targets) resolve too: both tables agree."""
    ldm = _sd1_ldm_set(tiny_sd1)
    checked = 0
    for path, module in tiny_sd1.unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and any(
            s in path for s in ("resnets", "downsamplers", "upsamplers")
        ):
            assert keymap.a1111_compvis_name(keymap.unet_kohya_name(path, SD1)) in ldm, path
            checked += 1
    assert checked > 50


def test_ldm_path_roundtrip_sd1(tiny_sd1: TinyComponents) -> None:
    levels = keymap.UP_ATTENTION_LEVELS["sd1"]
    for path, module in tiny_sd1.unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            try:
                ldm = keymap.diffusers_to_ldm_path(path, levels)
            except KeyError:
                continue
            assert keymap.ldm_to_diffusers_path(ldm, levels) == path


def _tiny_sdxl_unet() -> nn.Module:
    """SDXL's U-Net block structure at tiny width (as diffusers' own LoRA tests build it)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 2, 10],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=32,
        layers_per_block=2,
        attention_head_dim=(2, 4, 8),
        norm_num_groups=8,
    ).eval()


def test_sgm_names_match_formats_md_and_diffusers_conversion(tmp_path) -> None:
    """SGM-style U-Net keys (SDXL, as kohya) — checked against diffusers' own SGM→diffusers remap."""
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lorakiln.networks.export import save_kohya_lora

    unet = _tiny_sdxl_unet()
    net = create_lora_network(unet, [], SGM_FAMILY, dim=4, alpha=2, train_text_encoder=False)
    assert net.counts() == {"unet": 722}  # kohya's module count for SDXL
    for key in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_7_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k",
    ):
        assert key in net
    assert net.module_paths["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    for key in net:
        assert keymap.kohya_to_diffusers_module(key, SGM_FAMILY) == ("unet", net.module_paths[key])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, lora in net.loras():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen))
    deltas = {net.module_paths[k]: lora.delta_weight() for k, lora in net.loras()}
    net.remove()
    before = {p: unet.get_submodule(p).weight.detach().clone() for p in deltas}
    path = save_kohya_lora(net, tmp_path / "sgm.safetensors")

    state_dict, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path), unet_config=unet.config)
    StableDiffusionXLPipeline.load_lora_into_unet(state_dict, alphas, unet)
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == 722
    for layer in layers:
        layer.merge()
    for p, delta in deltas.items():
        after = unet.get_submodule(p).base_layer.weight
        torch.testing.assert_close(after - before[p], delta, rtol=1e-4, atol=1e-5)


def test_comfyui_key_map_covers_every_key(tiny_sd1: TinyComponents, network: LoRANetwork) -> None:
    """ComfyUI's `model_lora_keys_unet/clip` forms for SD1 (``comfy/lora.py``), rebuilt from rules.

    U-Net: `lora_unet_<diffusers path _>` for every diffusers weight that `unet_to_diffusers`
    knows, i.e. that has an LDM equivalent; CLIP: `lora_te_<text_model… path _>` for every
    `clip_l.transformer.text_model.…` weight.
    """
    levels = keymap.UP_ATTENTION_LEVELS["sd1"]
    comfy_keys = set()
    for name, _ in tiny_sd1.unet.named_parameters():
        module = name.rsplit(".", 1)[0]
        try:
            keymap.diffusers_to_ldm_path(module, levels)
        except KeyError:
            continue
        comfy_keys.add("lora_unet_" + module.replace(".", "_"))
    for name, _ in tiny_sd1.text_encoder.named_parameters():
        module = keymap.classic_text_model_path(name.rsplit(".", 1)[0])
        comfy_keys.add("lora_te_" + module.replace(".", "_"))
    assert set(network) <= comfy_keys, sorted(set(network) - comfy_keys)[:5]


def test_kohya_names_roundtrip_for_every_unet_layer(tiny_sd1: TinyComponents) -> None:
    """Resnet, sampler, conv_in/out and time-embedding names too (future LoCon targets)."""
    for path, module in tiny_sd1.unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            key = keymap.unet_kohya_name(path, SD1)
            assert keymap.kohya_to_diffusers_module(key, SD1) == ("unet", path)


def test_every_key_lands_on_a_module_of_a_real_ldm_checkpoint(tiny_sd1_file, network: LoRANetwork) -> None:
    """Same check against an LDM single file written by `models.ldm_export` (independent code)."""
    from safetensors import safe_open

    with safe_open(str(tiny_sd1_file), framework="pt") as fh:
        keys = list(fh.keys())
    ldm = set()
    for key in keys:
        for prefix in ("model.", "cond_stage_model."):  # A1111 names are relative to these
            if key.startswith(prefix + "diffusion_model.") or key.startswith(prefix + "transformer."):
                ldm.add(key[len(prefix) :].rsplit(".", 1)[0].replace(".", "_"))
    missing = [k for k in network if keymap.a1111_compvis_name(k) not in ldm]
    assert not missing, missing[:5]
