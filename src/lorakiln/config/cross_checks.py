"""Checks across options: a setting that contradicts another, or only means something for one
algorithm, is an error that names both, so no option ever silently does nothing.

`schema.RunConfig` runs `check_run` once the whole file is read (not on each assignment), so
importers can set options in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorakiln.config.schema import NetworkConfig, RunConfig


def check_run(cfg: RunConfig) -> None:
    """Raise `ValueError` (pydantic reports it with the file) for options that contradict each other."""
    if cfg.data.min_bucket_reso > cfg.data.max_bucket_reso:
        raise ValueError(f"data.min_bucket_reso ({cfg.data.min_bucket_reso}) is larger than "
                         f"data.max_bucket_reso ({cfg.data.max_bucket_reso})")
    if not cfg.data.train_data_dir and not cfg.data.dataset_name:
        raise ValueError("set data.train_data_dir (a folder) or data.dataset_name (a hub dataset)")
    p = cfg.prior
    if p.with_prior_preservation and not p.class_data_dir:
        raise ValueError("prior.with_prior_preservation needs prior.class_data_dir (a folder for the "
                         "class images; missing ones are generated there)")
    if cfg.data.cache_latents and cfg.data.random_crop:
        # flip_aug is fine: both orientations are cached (kohya does the same).
        raise ValueError("data.cache_latents cannot be combined with data.random_crop (each step "
                         "would need a new latent); set cache_latents = false or random_crop = false")
    check_network(cfg.network)
    if cfg.output.log_with == "none" and cfg.output.logging_dir:
        raise ValueError("output.logging_dir is the TensorBoard folder, and output.log_with = 'none' writes "
                         "none: drop logging_dir or set log_with = 'tensorboard'")
    if cfg.train.mode == "full":
        if cfg.pivotal.train_text_encoder_ti:
            raise ValueError("pivotal.train_text_encoder_ti is for LoRA training; with train.mode = 'full' "
                             "the whole text encoder trains (or set train.mode = 'lora')")
        if cfg.network.network_weights:
            raise ValueError("network.network_weights loads a LoRA; with train.mode = 'full' point "
                             "model.pretrained_model at the model to continue from instead")
        if cfg.network.dora_wd:
            raise ValueError("network.dora_wd is a LoRA option; train.mode = 'full' trains every weight "
                             "directly")
    elif cfg.train.fsdp:
        raise ValueError("train.fsdp shards a full fine-tune (train.mode = 'full'); a LoRA's trained weights "
                         "are small, and its processes run data-parallel: drop fsdp or set mode = 'full'")
    elif cfg.output.save_diffusers and cfg.network.network_module in ("loha", "lokr"):
        raise ValueError(f"output.save_diffusers: diffusers cannot load {cfg.network.network_module} "
                         "files (no LoHa/LoKr loader in diffusers/PEFT); use the kohya file in AUTOMATIC1111/ComfyUI, or set "
                         "save_diffusers = false")
    elif cfg.output.save_diffusers and cfg.network.dora_wd:
        raise ValueError("output.save_diffusers: diffusers drops DoRA magnitudes (dora_scale) and would "
                         "apply a plain LoRA (diffusers' `lora_state_dict` warns and drops them); set network.dora_wd = false for a diffusers "
                         "file, or save_diffusers = false and use the kohya file in AUTOMATIC1111/ComfyUI")


def check_network(net: NetworkConfig) -> None:
    """Options that only mean something for one algorithm are errors elsewhere, so a setting
    never silently does nothing. Run from `RunConfig` (not on each assignment), so importers can
    set `network_module` and its options in any order."""
    algo = net.network_module
    if algo != "lokr":
        if net.lokr_factor != -1:
            raise ValueError(f"network.lokr_factor is a LoKr option; network_module is {algo!r}")
        if net.lokr_decompose_both:
            raise ValueError(f"network.lokr_decompose_both is a LoKr option; network_module is {algo!r}")
    if net.use_tucker and algo not in ("loha", "lokr"):
        raise ValueError("network.use_tucker is a LoHa/LoKr option (lorakiln's LoRA/LoCon has no "
                         f"Tucker mid layer); network_module is {algo!r}")
    if net.dora_wd and algo not in ("lora", "locon"):
        raise ValueError(f"network.dora_wd is trained with network_module 'lora' or 'locon', not {algo!r} "
                         "(lorakiln applies LyCORIS DoHa/DoKr files in generation but does not train them)")
    if net.dora_wd and net.network_dropout:
        raise ValueError("network.network_dropout does not work with network.dora_wd (DoRA updates whole "
                         "weights; LyCORIS ignores the dropout there too): set one of them off")
    if net.network_dropout and algo in ("loha", "lokr"):
        raise ValueError(f"network.network_dropout is not supported with {algo} (LyCORIS does not "
                         "implement dropout for LoHa/LoKr either)")
    if net.lokr_factor == 0 or net.lokr_factor < -1:
        raise ValueError(f"network.lokr_factor must be -1 or a positive integer, got {net.lokr_factor}")
    if net.target_modules in ("attn", "attn-mlp") and (net.conv_dim is not None or algo == "locon"):
        what = "network.conv_dim" if net.conv_dim is not None else "network_module = 'locon'"
        raise ValueError(f"{what} adapts the U-Net's ResNet convs, which network.target_modules = "
                         f"{net.target_modules!r} leaves out: use target_modules = 'full' (or 'kohya'), or drop it")
    if net.dim_from_weights and not net.network_weights:
        raise ValueError("network.dim_from_weights reads the ranks from network.network_weights: set that "
                         "to the LoRA file to continue")
    if net.dim_from_weights and algo not in ("lora", "locon"):
        raise ValueError("network.dim_from_weights reads lora_down ranks (kohya's rule) and works with "
                         f"network_module 'lora'/'locon', not {algo!r}; set network_dim to the file's rank")
    if net.dim_from_weights and (net.target_include or net.target_exclude or net.target_modules != "kohya"):
        raise ValueError("network.dim_from_weights takes the modules from network.network_weights; drop "
                         "target_modules/target_include/target_exclude (or dim_from_weights)")
    if net.conv_alpha is not None and net.conv_dim is None and algo == "lora" and net.target_modules != "full":
        raise ValueError("network.conv_alpha needs network.conv_dim with network_module = 'lora' "
                             "(or use network_module = 'locon' or target_modules = 'full')")
