"""The `[network]` section: the adapter algorithm, its rank, its targets and a file to start from.

Kept out of `schema.py` (which it joins as `RunConfig.network`) so that file stays short. Option
names are kohya sd-scripts' (`network_dim`, `conv_dim`, `network_weights`, `dim_from_weights`);
the target presets are `lorakiln.networks.targets` (pure Python, no torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lorakiln.config.section import Section
from lorakiln.networks.targets import PRESET_HELP, PRESETS, compile_patterns


class NetworkConfig(Section):
    network_module: Literal["lora", "locon", "loha", "lokr"] = Field(
        "lora", description="Adapter algorithm: `lora` (kohya `networks.lora`; with `conv_dim` it is "
        "kohya's LoCon), `locon` (LoRA also on the U-Net's ResNet/up/down-sampler convs), `loha` "
        "(LyCORIS Hadamard product) or `lokr` (LyCORIS Kronecker product). LoHa/LoKr files load in "
        "AUTOMATIC1111 and ComfyUI, not in diffusers. kohya's `networks.lora` means `lora`.")
    network_dim: int = Field(8, ge=1, le=1024, description="LoRA rank: the size of the low-rank update. "
                             "Higher keeps more detail and makes bigger files.")
    network_alpha: float | None = Field(1.0, ge=0.0, description="LoRA alpha; the update is scaled by "
                                        "alpha/dim (alpha = dim: no damping). Unset or 0 means alpha = dim.")
    network_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch input "
                                   "(lora/locon only; LyCORIS implements none for LoHa/LoKr).")
    conv_dim: int | None = Field(None, ge=1, le=1024, description="Rank of the adapters on the U-Net's "
                                 "k×k convs (ResNet conv1/conv2, up/down-samplers). With `lora` setting it "
                                 "turns on kohya's LoCon; `locon`/`loha`/`lokr` always adapt those convs and "
                                 "default it to network_dim (LyCORIS's default).")
    conv_alpha: float | None = Field(None, ge=0.0, description="Alpha of the conv adapters (scale "
                                     "conv_alpha/conv_dim). Unset: 1 with `lora` + conv_dim (kohya's "
                                     "default), network_alpha for locon/loha/lokr (LyCORIS's).")
    lokr_factor: int = Field(-1, description="LoKr only: split each weight dimension as factor × rest "
                             "(LyCORIS `factor`); -1 picks the most balanced split.")
    lokr_decompose_both: bool = Field(False, description="LoKr only: also make the small Kronecker "
                                      "factor low rank (LyCORIS `decompose_both`).")
    use_tucker: bool = Field(False, description="LoHa/LoKr only: Tucker-factor the k×k conv adapters "
                             "(LyCORIS `use_tucker`, formerly `use_cp`).")
    dora_wd: bool = Field(False, description="DoRA (weight-decomposed LoRA, LyCORIS `dora_wd`), with "
                          "`lora`/`locon`: also trains a magnitude per input channel of each adapted "
                          "layer (`dora_scale` in the file). AUTOMATIC1111 and ComfyUI apply it alike; "
                          "diffusers drops it, so `save_diffusers` is refused. No `network_dropout`. "
                          "LyCORIS's default axis is the output one (`wd_on_output`); lorakiln uses the "
                          "input axis, the one both clients read the same way.")
    network_train_unet_only: bool = Field(False, description="Train the U-Net LoRA only (no text encoder).")
    target_modules: Literal["attn", "attn-mlp", "kohya", "full"] = Field(
        "kohya", description="Which layers get an adapter: "
        + "; ".join(f"`{p}`: {PRESET_HELP[p]}" for p in PRESETS)
        + ". On SD 1.5 that is 128, 160, 192 and 277 U-Net layers (kohya's default is 192; the diffusers "
        "scripts train the 128 of `attn`). LyCORIS and OneTrainer call `kohya`'s set \"attn-mlp\"; here "
        "`attn-mlp` leaves out the transformers' proj_in/proj_out. `full` gives the convs `conv_dim` "
        "(default network_dim).")
    target_include: list[str] = Field(default_factory=list, description="Only adapt the preset's layers "
                                      "whose name matches one of these Python regular expressions, searched "
                                      "in the kohya name (`lora_unet_…_attn2_to_k`) and in the diffusers path "
                                      "(`unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`), "
                                      "e.g. `[\"attn2\"]` for cross-attention only (ai-toolkit's "
                                      "`only_if_contains`). It applies to a trained text encoder's "
                                      "layers too: add `\"self_attn\"` to keep them.")
    target_exclude: list[str] = Field(default_factory=list, description="Leave out the layers whose name "
                                      "matches one of these regular expressions (as target_include), e.g. "
                                      "`[\"^unet\\.mid_block\"]` (ai-toolkit's `ignore_if_contains`). A pattern "
                                      "that matches nothing is an error, as is keeping only part of a text "
                                      "encoder's q/k/v/out_proj.")
    network_weights: str | None = Field(None, description="Start from an existing LoRA file (continue "
                                        "training). A file with fewer modules than the network loads into "
                                        "the ones it has and the run reports which start fresh.")
    dim_from_weights: bool = Field(False, description="Build the network from network_weights itself: "
                                   "exactly its modules, each at the file's rank (kohya's "
                                   "`--dim_from_weights`), instead of network_dim and target_modules.")

    @field_validator("target_include", "target_exclude")
    @classmethod
    def _regexes(cls, value: list[str], info: object) -> list[str]:
        compile_patterns(f"network.{getattr(info, 'field_name', 'target')}", value)
        return value

    @field_validator("network_module", mode="before")
    @classmethod
    def _kohya_module_name(cls, value: object) -> object:
        """Accept kohya's ``networks.lora`` (the ``ss_network_module`` sd-scripts writes) as ``lora``; point
        ``lycoris.kohya`` users at the algorithm names, as it needs an ``algo`` to mean anything."""
        if isinstance(value, str):
            name = value.strip().lower()
            if name == "networks.lora":
                return "lora"
            if name == "lycoris.kohya":
                raise ValueError("lycoris.kohya needs an algo: set network_module to the algorithm "
                                 "itself (locon, loha or lokr)")
            return name
        return value
