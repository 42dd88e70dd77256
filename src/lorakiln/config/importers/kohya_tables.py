"""kohya sd-scripts option names → lorakiln, as data (used for sd-scripts TOMLs and command
lines, and for the kohya_ss GUI after it is translated to sd-scripts options).

Names are sd-scripts' argparse names (`train_network.py`, `sdxl_train_network.py`). Options
with special rules (learning rates, network module, samples, regularisation images...) are
handled in `sdscripts.py`; everything else is here: a direct key, an "unsupported, because",
a "noted, because", or a neutral value that means the feature is off.
"""

from __future__ import annotations

from typing import Any

from lorakiln.config.importers.draft import LAUNCHER, LOGGING_SERVICE, NO_UPLOAD

#: Same meaning in lorakiln (the schema converts and checks the value).
DIRECT: dict[str, str] = {
    "pretrained_model_name_or_path": "model.pretrained_model",
    "vae": "model.vae",
    "clip_skip": "model.clip_skip",
    "train_data_dir": "data.train_data_dir",
    "caption_extension": "data.caption_extension",
    "caption_extention": "data.caption_extension",  # sd-scripts' old misspelling, still accepted
    "resolution": "data.resolution",
    "enable_bucket": "data.enable_bucket",
    "min_bucket_reso": "data.min_bucket_reso",
    "max_bucket_reso": "data.max_bucket_reso",
    "bucket_reso_steps": "data.bucket_reso_steps",
    "bucket_no_upscale": "data.bucket_no_upscale",
    "shuffle_caption": "data.shuffle_caption",
    "keep_tokens": "data.keep_tokens",
    "caption_dropout_rate": "data.caption_dropout_rate",
    "caption_tag_dropout_rate": "data.caption_tag_dropout_rate",
    "caption_dropout_every_n_epochs": "data.caption_dropout_every_n_epochs",
    "flip_aug": "data.flip_aug",
    "random_crop": "data.random_crop",
    "cache_latents": "data.cache_latents",
    "cache_latents_to_disk": "data.cache_latents_to_disk",
    "network_dim": "network.network_dim",
    "network_alpha": "network.network_alpha",
    "network_dropout": "network.network_dropout",
    "network_train_unet_only": "network.network_train_unet_only",
    "network_weights": "network.network_weights",
    "learning_rate": "train.learning_rate",
    "train_batch_size": "train.train_batch_size",
    "max_train_epochs": "train.max_train_epochs",
    "max_train_steps": "train.max_train_steps",
    "lr_warmup_steps": "train.lr_warmup_steps",
    "lr_scheduler_num_cycles": "train.lr_scheduler_num_cycles",
    "lr_scheduler_power": "train.lr_scheduler_power",
    "max_grad_norm": "train.max_grad_norm",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "mixed_precision": "train.mixed_precision",
    "seed": "train.seed",
    "noise_offset": "train.noise_offset",
    "min_snr_gamma": "train.min_snr_gamma",
    "sdpa": "train.sdpa",
    "output_dir": "output.output_dir",
    "output_name": "output.output_name",
    "save_precision": "output.save_precision",
    "save_every_n_epochs": "output.save_every_n_epochs",
    "save_every_n_steps": "output.save_every_n_steps",
    "save_state": "output.save_state",
    "logging_dir": "output.logging_dir",
    "no_metadata": "output.no_metadata",
}

#: Direct keys whose 0 means "not set" in sd-scripts (lorakiln leaves them unset too).
ZERO_IS_UNSET = frozenset({
    "clip_skip", "max_train_epochs", "max_train_steps", "min_snr_gamma", "save_every_n_epochs",
    "save_every_n_steps", "lr_scheduler_num_cycles", "lr_scheduler_power",
})

_LOSS = "loss weighting is not supported (plain MSE, optionally min_snr_gamma)"
_NOISE = "only plain offset noise (noise_offset) is supported"
_KEEP_ALL = "lorakiln keeps every saved file"
#: Options with no lorakiln equivalent.
UNSUPPORTED: dict[str, str] = {
    "color_aug": "colour augmentation is not supported",
    "face_crop_aug_range": "face-crop augmentation is not supported",
    "token_warmup_min": "caption token warm-up is not supported",
    "caption_prefix": "caption prefixes are not supported: add the words to the caption files",
    "caption_suffix": "caption suffixes are not supported: add the words to the caption files",
    "caption_separator": "tags are separated by commas",
    "keep_tokens_separator": "use keep_tokens (the first N tags stay in place)",
    "secondary_separator": "tags are separated by commas",
    "enable_wildcard": "caption wildcards are not supported",
    "resize_interpolation": "lorakiln resizes with Lanczos",
    "skip_image_resolution": "every image is trained (lorakiln's dataset check flags small ones)",
    "token_warmup_step": "caption token warm-up is not supported",
    "weighted_captions": "weighted captions, (word:1.2), are not supported",
    "debiased_estimation_loss": _LOSS,
    "scale_v_pred_loss_like_noise_pred": _LOSS,
    "v_pred_like_loss": _LOSS,
    "zero_terminal_snr": "zero-terminal-SNR noise schedules are not supported",
    "multires_noise_iterations": _NOISE,
    "adaptive_noise_scale": _NOISE,
    "noise_offset_random_strength": _NOISE,
    "ip_noise_gamma": "input-perturbation noise is not supported",
    "ip_noise_gamma_random_strength": "input-perturbation noise is not supported",
    "loss_type": "only the L2 loss is supported",
    "masked_loss": "masked loss is not supported",
    "alpha_mask": "masked loss is not supported",
    "scale_weight_norms": "max-norm regularisation is not supported",
    "base_weights": "merging LoRAs into the base model before training is not supported",
    "base_weights_multiplier": "merging LoRAs into the base model before training is not supported",
    "dim_from_weights": "the rank is not read from network_weights: set network.network_dim to the file's",
    "network_train_text_encoder_only": "training the text-encoder LoRA alone is not supported",
    "stop_text_encoder_training": "sd-scripts uses this in DreamBooth fine-tuning only",
    "lr_scheduler_type": "custom scheduler classes are not supported",
    "lr_scheduler_args": "scheduler arguments are not supported (lr_scheduler_num_cycles/power are)",
    "loraplus_lr_ratio": "LoRA+ is not supported",
    "loraplus_unet_lr_ratio": "LoRA+ is not supported",
    "loraplus_text_encoder_lr_ratio": "LoRA+ is not supported",
    "full_fp16": "LoRA weights stay float32 (train.mixed_precision covers the frozen model)",
    "full_bf16": "LoRA weights stay float32 (train.mixed_precision covers the frozen model)",
    "fp8_base": "fp8 base weights are not supported",
    "v2": "SD 2.x is not supported (lorakiln trains SD 1.x and SDXL)",
    "v_parameterization": "v-prediction training is not supported",
    "save_last_n_epochs": _KEEP_ALL,
    "save_last_n_steps": _KEEP_ALL,
    "save_last_n_epochs_state": _KEEP_ALL,
    "save_last_n_steps_state": _KEEP_ALL,
    "save_state_on_train_end": "use output.save_state = true (a state is saved with every LoRA)",
    "save_model_as": "lorakiln writes .safetensors only",
    "resume": "sd-scripts states cannot be resumed; continue from the LoRA with network.network_weights",
    "in_json": "fine-tuning metadata JSON is not read (kohya folders or metadata.jsonl are)",
    "dataset_repeats": "repeats come from folder names (<repeats>_<token>)",
    "training_comment": "lorakiln writes no ss_training_comment",
    "max_token_length": "captions are cut at 75 tokens (lorakiln warns which)",
    "min_timestep": "the timestep range is not configurable (0-1000)",
    "max_timestep": "the timestep range is not configurable (0-1000)",
    "sample_at_first": "validation renders after epochs/steps, not before training",
    "epoch": "a kohya_ss GUI field; sd-scripts ignores it in a config file (max_train_epochs counts)",
    "log_with": LOGGING_SERVICE,
    "log_prefix": LOGGING_SERVICE,
    "log_tracker_name": LOGGING_SERVICE,
    "log_tracker_config": LOGGING_SERVICE,
    "log_config": LOGGING_SERVICE,
    "wandb_api_key": LOGGING_SERVICE,
    "wandb_run_name": LOGGING_SERVICE,
    "huggingface_repo_id": NO_UPLOAD,
    "huggingface_repo_type": NO_UPLOAD,
    "huggingface_path_in_repo": NO_UPLOAD,
    "huggingface_token": NO_UPLOAD,
    "huggingface_repo_visibility": NO_UPLOAD,
    "save_state_to_huggingface": NO_UPLOAD,
    "resume_from_huggingface": NO_UPLOAD,
    "async_upload": NO_UPLOAD,
    "metadata_title": "lorakiln writes its own modelspec metadata (output.trigger_phrase is settable)",
    "metadata_author": "lorakiln writes its own modelspec metadata (output.trigger_phrase is settable)",
    "metadata_description": "lorakiln writes its own modelspec metadata (output.trigger_phrase is settable)",
    "metadata_license": "lorakiln writes its own modelspec metadata (output.trigger_phrase is settable)",
    "metadata_tags": "lorakiln writes its own modelspec metadata (output.trigger_phrase is settable)",
}

#: Options whose effect lorakiln has anyway or that only tune speed/memory: nothing to set.
NOTED: dict[str, str] = {
    "xformers": "lorakiln uses PyTorch SDPA attention (train.sdpa)",
    "mem_eff_attn": "lorakiln uses PyTorch SDPA attention (train.sdpa)",
    "no_half_vae": "lorakiln runs the SDXL VAE in float32 unless it is an fp16-fix VAE",
    "cache_text_encoder_outputs": "lorakiln reuses text-encoder outputs by itself while the encoders are frozen",
    "cache_text_encoder_outputs_to_disk": "lorakiln reuses text-encoder outputs by itself while the encoders "
                                          "are frozen",
    "vae_batch_size": LAUNCHER,
    "max_data_loader_n_workers": LAUNCHER,
    "persistent_data_loader_workers": LAUNCHER,
    "lowram": LAUNCHER,
    "highvram": LAUNCHER,
    "lowvram": LAUNCHER,
    "ddp_timeout": LAUNCHER,
    "ddp_gradient_as_bucket_view": LAUNCHER,
    "ddp_static_graph": LAUNCHER,
    "dynamo_backend": LAUNCHER,
    "torch_compile": LAUNCHER,
    "output_config": "not a training setting",
    "cache_info": "lorakiln reads image sizes itself (a cache of them is not needed)",
    "config_file": "not a training setting",
}

#: Values that mean "feature off / default behaviour" beyond the generic empty/false/0.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "max_token_length": (75, "75"),
    "min_timestep": (0,),
    "max_timestep": (1000, "1000"),
    "save_model_as": ("safetensors",),
    "loss_type": ("l2",),
    "dynamo_backend": ("no",),
}

#: sd-scripts defaults that differ from lorakiln's, replayed when an option is absent.
DEFAULTS: dict[str, Any] = {
    "enable_bucket": False,
    "caption_extension": ".caption",
    "network_dim": 4,
    "learning_rate": 2e-6,
    "save_precision": "float",
}
