"""Model families as data.

Everything that differs between Stable Diffusion 1.x and SDXL — key prefixes, metadata
strings, LoRA naming style, default resolution, how the U-Net is conditioned — lives in one
`ModelFamily` record, so the rest of the code asks the family instead of branching on
`is_sdxl`. Values come from kohya sd-scripts (`train_network.py`
metadata, `library/sai_model_spec.py`, textual inversion) and from the single-file prefixes and
layouts of sd-scripts' `model_util.py`/`sdxl_model_util.py` and diffusers' `single_file_utils.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lorakiln.errors import ModelLoadError

#: How a text encoder's weights are named inside a single-file checkpoint:
#: `hf_clip` — the transformers CLIP layout under a prefix (`…text_model.encoder.layers.N…`);
#: `open_clip` — OpenCLIP's layout (`transformer.resblocks.N.attn.in_proj_weight` fused q/k/v,
#: `ln_final`, transposed `text_projection`), used by SDXL's second encoder.
SingleFileTextLayout = Literal["hf_clip", "open_clip"]


@dataclass(frozen=True)
class ModelFamily:
    """Static facts about one Stable Diffusion family."""

    name: str
    #: `ss_base_model_version` written into LoRA metadata (kohya `model_util`).
    base_model_version: str
    #: `ss_v2` metadata value; A1111 reads it to tell SD2 from SD1.
    ss_v2: str
    #: `modelspec.architecture` for a LoRA of this family (kohya `sai_model_spec.py`).
    modelspec_lora_architecture: str
    #: `modelspec.implementation` for a LoRA of this family.
    modelspec_implementation: str
    #: Default square training resolution in pixels.
    default_resolution: int
    #: kohya key prefix per text encoder, in pipeline order.
    te_lora_prefixes: tuple[str, ...]
    #: diffusers/PEFT component name per text encoder, in pipeline order; also the subfolder
    #: of a diffusers model folder that holds it.
    te_diffusers_prefixes: tuple[str, ...]
    #: U-Net LoRA key style: SD1 uses diffusers names, SDXL the SGM/LDM names (as kohya).
    unet_key_style: Literal["diffusers", "sgm"]
    #: A key whose presence in a single-file checkpoint identifies the family (diffusers
    #: `CHECKPOINT_KEY_NAMES`).
    single_file_marker: str
    #: Single-file prefix of each text encoder, in pipeline order.
    te_single_file_prefixes: tuple[str, ...]
    #: diffusers pipeline class used for loading and generation.
    pipeline_class: str
    #: Modules (by class name) whose Linear / 1x1-conv children get LoRA in the U-Net.
    unet_target_blocks: tuple[str, ...] = ("Transformer2DModel",)
    #: Modules (by class name) whose Linear children get LoRA in each text encoder.
    te_target_blocks: tuple[str, ...] = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
    #: U-Net config values that a diffusers folder of this family must have (a missing key
    #: counts as the `UNet2DConditionModel` default). SD 2.x shares SD1's pipeline class and
    #: block layout but uses linear projections; SDXL adds `text_time` embeddings.
    unet_config_match: tuple[tuple[str, object], ...] = ()
    #: transformers class of each text encoder, in pipeline order. SDXL's second encoder has a
    #: projection head: its pooled, projected output conditions the U-Net (`text_embeds`).
    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel",)
    #: Layout of each text encoder inside a single-file checkpoint (see `SingleFileTextLayout`).
    te_single_file_layouts: tuple[SingleFileTextLayout, ...] = ("hf_clip",)
    #: Tokenizer subfolder of a diffusers model folder, one per text encoder.
    tokenizer_subfolders: tuple[str, ...] = ("tokenizer",)
    #: Pad token of each tokenizer. All SD tokenizers share CLIP's BPE vocabulary, but SDXL's
    #: `tokenizer_2` pads with "!" (id 0) instead of `<|endoftext|>`: padded positions feed the
    #: text encoder, so the pad id changes the conditioning and must match the base model's.
    tokenizer_pad_tokens: tuple[str, ...] = ("<|endoftext|>",)
    #: Which hidden state of the text encoders conditions the U-Net: `-1` is the last layer,
    #: `-2` the penultimate (SDXL, for both encoders). With `te_final_layer_norm` the encoder's
    #: `final_layer_norm` is applied to it (SD1's `last_hidden_state`; also kohya's clip skip
    #: for SD1, which picks `hidden_states[-n]` and normalises it); SDXL uses the raw state.
    te_hidden_state_index: int = -1
    te_final_layer_norm: bool = True
    #: Index of the text encoder whose pooled, projected output (`text_embeds`) the U-Net
    #: takes through `added_cond_kwargs`; `None` when the U-Net has no pooled-text input.
    pooled_text_encoder_index: int | None = None
    #: SDXL micro-conditioning: the U-Net also takes `time_ids` = (original height, width,
    #: crop top, crop left, target height, width) per sample through `added_cond_kwargs`,
    #: i.e. 6 numbers; 0 for families without them. Each is embedded in
    #: `addition_time_embed_dim` sinusoids, so the added-condition input width is
    #: `num_time_ids · addition_time_embed_dim + pooled width` (SDXL: 6 · 256 + 1280 = 2816).
    num_time_ids: int = 0
    #: The family's stock VAE overflows in float16 (SDXL 1.0's does; SD 1.x's does not), so it
    #: must encode/decode in float32 unless the loaded VAE says `force_upcast: false` (an
    #: fp16-fix VAE). diffusers defaults `force_upcast` to true even for SD 1.x VAEs, hence a
    #: family fact rather than only the VAE config (see `ModelBundle.vae_needs_fp32`).
    vae_fp16_unsafe: bool = False
    #: Tensor name per text encoder in an embeddings file. SD1 uses `clip_l` (not kohya's
    #: `emb_params`): a single-key dict loads in A1111, ComfyUI picks `clip_l` by name, and the
    #: diffusers advanced SDXL recipe reads `sd["clip_l"]`. SDXL: `clip_l`/`clip_g`.
    ti_file_keys: tuple[str, ...] = ("clip_l",)
    #: `modelspec.architecture` for a textual-inversion embedding of this family.
    modelspec_ti_architecture: str = "stable-diffusion-v1/textual-inversion"
    #: Folder under `lorakiln/models/configs/` with the reference model's diffusers configs
    #: (SD 1.5 / SDXL base 1.0): what a single file's tensor shapes cannot tell (`arch.py`).
    bundled_configs: str = "sd15"

    @property
    def uses_pooled_text(self) -> bool:
        """True when the U-Net takes a pooled text embedding (`added_cond_kwargs["text_embeds"]`)."""
        return self.pooled_text_encoder_index is not None

    @property
    def uses_time_ids(self) -> bool:
        """True when the U-Net takes SDXL's size/crop `time_ids` (`added_cond_kwargs["time_ids"]`)."""
        return self.num_time_ids > 0

    @property
    def num_text_encoders(self) -> int:
        return len(self.te_diffusers_prefixes)


SD1 = ModelFamily(
    name="sd1",
    base_model_version="sd_v1",
    ss_v2="False",
    modelspec_lora_architecture="stable-diffusion-v1/lora",
    modelspec_implementation="diffusers",
    default_resolution=512,
    te_lora_prefixes=("lora_te",),
    te_diffusers_prefixes=("text_encoder",),
    unet_key_style="diffusers",
    single_file_marker="model.diffusion_model.output_blocks.11.0.skip_connection.weight",
    te_single_file_prefixes=("cond_stage_model.transformer.",),
    pipeline_class="StableDiffusionPipeline",
    unet_config_match=(("use_linear_projection", False), ("addition_embed_type", None)),
)

SDXL = ModelFamily(
    name="sdxl",
    base_model_version="sdxl_base_v1-0",  # kohya sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0
    ss_v2="False",
    modelspec_lora_architecture="stable-diffusion-xl-v1-base/lora",
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
    default_resolution=1024,
    te_lora_prefixes=("lora_te1", "lora_te2"),
    te_diffusers_prefixes=("text_encoder", "text_encoder_2"),
    unet_key_style="sgm",
    # diffusers CHECKPOINT_KEY_NAMES["xl_base"]; the refiner has only an OpenCLIP encoder, as
    # `embedders.0`, so it does not match.
    single_file_marker="conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
    te_single_file_prefixes=("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
    pipeline_class="StableDiffusionXLPipeline",
    unet_config_match=(("use_linear_projection", True), ("addition_embed_type", "text_time")),
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    te_single_file_layouts=("hf_clip", "open_clip"),
    tokenizer_subfolders=("tokenizer", "tokenizer_2"),
    tokenizer_pad_tokens=("<|endoftext|>", "!"),
    te_hidden_state_index=-2,
    te_final_layer_norm=False,
    pooled_text_encoder_index=1,
    num_time_ids=6,
    vae_fp16_unsafe=True,
    ti_file_keys=("clip_l", "clip_g"),
    modelspec_ti_architecture="stable-diffusion-xl-v1-base/textual-inversion",
    bundled_configs="sdxl",
)

FAMILIES: dict[str, ModelFamily] = {SD1.name: SD1, SDXL.name: SDXL}


def get_family(name: str) -> ModelFamily:
    """Return the family called `name`, or raise an error listing the valid names."""
    try:
        return FAMILIES[name]
    except KeyError:
        valid = ", ".join(sorted(FAMILIES))
        raise ModelLoadError(f"unknown model family {name!r}; valid families: {valid}") from None
