"""What the Train tab shows for each config key: a human label, and where the field sits.

A form whose labels are `network.dora_wd` and `train.unet_lr` reads like a config file, not a
tool. The kohya_ss GUI shows short labels ("Unet learning rate", "Network Rank (Dimension)"),
4–6 fields to a row, essentials first and the rest in collapsible groups; this module is that
layout for lorakiln's schema. The config key itself stays one hover away (the field's tooltip)
and the schema's help sits behind an info icon (`ui/style.py`).

`ESSENTIAL_ROWS` is the first screen. `GROUPS` holds every other key in the kohya_ss GUI's
order (folders and output, dataset, optimizer, network, samples, then the advanced tabs); a key
the schema gains later lands in the last group, so nothing disappears, and
`tests/ui/test_forms.py` checks that every key has exactly one place.
"""

from __future__ import annotations

#: The first screen, row by row: what every run sets.
ESSENTIAL_ROWS: tuple[tuple[str, ...], ...] = (
    ("model.pretrained_model", "data.train_data_dir", "output.output_name", "output.trigger_phrase",
     "data.resolution"),
    ("train.max_train_epochs", "train.max_train_steps", "train.train_batch_size", "output.save_every_n_epochs",
     "train.seed", "train.mixed_precision"),
    ("train.optimizer_type", "train.learning_rate", "train.unet_lr", "train.text_encoder_lr", "train.lr_scheduler",
     "train.lr_warmup_steps"),
    ("network.network_module", "network.network_dim", "network.network_alpha", "network.conv_dim",
     "network.conv_alpha", "network.network_train_unet_only"),
)
ESSENTIALS: tuple[str, ...] = tuple(key for row in ESSENTIAL_ROWS for key in row)

#: Collapsed groups in the kohya_ss GUI's order; the last one takes every key not named anywhere.
GROUPS: dict[str, tuple[str, ...]] = {
    "Folders and saving": ("model.vae", "output.output_dir", "output.logging_dir", "output.log_with",
                           "output.save_precision",
                           "output.save_every_n_steps", "output.save_state", "output.save_diffusers",
                           "output.no_metadata", "train.resume"),
    "Dataset and captions": ("data.caption_extension", "data.repeats", "data.instance_prompt", "data.enable_bucket",
                             "data.min_bucket_reso", "data.max_bucket_reso", "data.bucket_reso_steps",
                             "data.bucket_no_upscale", "data.shuffle_caption", "data.keep_tokens",
                             "data.caption_dropout_rate", "data.caption_tag_dropout_rate",
                             "data.caption_dropout_every_n_epochs", "data.flip_aug", "data.random_crop",
                             "data.cache_latents", "data.cache_latents_to_disk", "data.cache_text_encoder_outputs",
                             "data.check_images", "data.dataset_name", "data.caption_column", "data.image_column"),
    "Optimizer and schedule": ("train.optimizer_args", "train.lr_scheduler_num_cycles", "train.lr_scheduler_power",
                               "train.max_grad_norm", "train.gradient_accumulation_steps", "train.adam_beta1",
                               "train.adam_beta2", "train.adam_weight_decay", "train.adam_epsilon",
                               "train.prodigy_safeguard_warmup", "train.prodigy_use_bias_correction",
                               "train.prodigy_decouple", "train.prodigy_beta3", "train.prodigy_d_coef",
                               "train.train_text_encoder_frac", "train.ema_decay"),
    "Network": ("network.target_modules", "network.target_include", "network.target_exclude",
                "network.network_dropout", "network.dora_wd", "network.lokr_factor", "network.lokr_decompose_both",
                "network.use_tucker", "network.network_weights", "network.dim_from_weights", "train.mode",
                "train.fsdp"),
    "Samples and validation": ("validation.sample_prompts", "validation.sample_every_n_epochs",
                               "validation.sample_every_n_steps", "validation.sample_sampler",
                               "validation.validation_prompt", "validation.validation_negative_prompt",
                               "validation.num_validation_images", "validation.validation_epochs",
                               "validation.validation_steps", "validation.validation_inference_steps",
                               "validation.validation_guidance_scale", "validation.validation_resolution",
                               "validation.validation_seed", "validation.final_grid",
                               "validation.signals", "validation.validation_split",
                               "validation.validation_images", "validation.signal_timesteps",
                               "validation.drift_prompts", "validation.drift_threshold"),
    "Pivotal tuning (new tokens)": ("pivotal.train_text_encoder_ti", "pivotal.token_abstraction",
                                    "pivotal.num_new_tokens_per_abstraction", "pivotal.initializer_concept",
                                    "pivotal.train_text_encoder_ti_frac", "pivotal.text_encoder_ti_lr",
                                    "pivotal.adam_weight_decay_text_encoder", "pivotal.ti_std_pull",
                                    "pivotal.ti_fix_pooling"),
    "Prior preservation (class images)": ("prior.with_prior_preservation", "prior.class_data_dir",
                                          "prior.class_prompt", "prior.num_class_images", "prior.prior_loss_weight",
                                          "prior.class_inference_steps", "prior.sample_batch_size"),
    "Output preservation": ("preservation.diff_output_preservation", "preservation.preservation_class",
                            "preservation.preservation_trigger", "preservation.preservation_weight",
                            "preservation.blank_prompt_preservation", "preservation.blank_prompt_weight",
                            "preservation.preservation_prompts", "preservation.preservation_prompts_weight"),
    "Advanced": ("train.noise_offset", "train.min_snr_gamma", "train.gradient_checkpointing", "train.sdpa",
                 "model.clip_skip", "model.config_dir", "train.detect_anomaly_every"),
}
LAST_GROUP = "Advanced"

#: Labels where the key's own words would not do (kohya_ss GUI wording where it has one).
LABELS: dict[str, str] = {
    "model.pretrained_model": "Base model",
    "model.vae": "VAE",
    "model.config_dir": "Model config folder",
    "model.clip_skip": "Clip skip",
    "data.train_data_dir": "Dataset folder",
    "data.resolution": "Resolution (w, h)",
    "data.repeats": "Repeats (image folders)",
    "data.instance_prompt": "Caption for uncaptioned images",
    "data.enable_bucket": "Aspect-ratio buckets",
    "data.min_bucket_reso": "Min bucket size",
    "data.max_bucket_reso": "Max bucket size",
    "data.bucket_reso_steps": "Bucket step",
    "data.bucket_no_upscale": "Don't upscale buckets",
    "data.keep_tokens": "Keep n tokens",
    "data.caption_dropout_rate": "Caption dropout",
    "data.caption_tag_dropout_rate": "Tag dropout",
    "data.caption_dropout_every_n_epochs": "Drop captions every n epochs",
    "data.flip_aug": "Flip augmentation",
    "data.cache_text_encoder_outputs": "Cache text-encoder outputs",
    "data.dataset_name": "Hub dataset",
    "network.network_module": "Network type",
    "network.network_dim": "Rank (dim)",
    "network.network_alpha": "Alpha",
    "network.conv_dim": "Conv rank",
    "network.conv_alpha": "Conv alpha",
    "network.network_dropout": "Dropout",
    "network.lokr_factor": "LoKr factor",
    "network.lokr_decompose_both": "LoKr: decompose both",
    "network.use_tucker": "Tucker decomposition",
    "network.dora_wd": "DoRA (weight decomposition)",
    "network.network_train_unet_only": "U-Net only",
    "network.network_weights": "Start from LoRA file",
    "network.dim_from_weights": "Layers and ranks from that file",
    "network.target_modules": "Layers to train",
    "network.target_include": "Only layers matching",
    "network.target_exclude": "Skip layers matching",
    "train.mode": "Training mode",
    "train.learning_rate": "Learning rate",
    "train.unet_lr": "U-Net LR",
    "train.text_encoder_lr": "Text encoder LR",
    "train.train_text_encoder_frac": "Text encoder: share of steps",
    "train.train_batch_size": "Batch size",
    "train.max_train_epochs": "Epochs",
    "train.max_train_steps": "Max steps",
    "train.optimizer_type": "Optimizer",
    "train.optimizer_args": "Optimizer extra arguments",
    "train.lr_scheduler": "LR scheduler",
    "train.lr_warmup_steps": "Warmup steps",
    "train.lr_scheduler_num_cycles": "Scheduler cycles",
    "train.lr_scheduler_power": "Scheduler power",
    "train.max_grad_norm": "Max grad norm",
    "train.gradient_accumulation_steps": "Gradient accumulation",
    "train.mixed_precision": "Mixed precision",
    "train.min_snr_gamma": "Min SNR gamma",
    "train.ema_decay": "EMA decay",
    "train.fsdp": "Shard a full fine-tune (FSDP)",
    "train.sdpa": "SDPA attention",
    "train.resume": "Resume from state",
    "train.detect_anomaly_every": "Check loss every n steps",
    "output.output_dir": "Output folder",
    "output.output_name": "Output name",
    "output.trigger_phrase": "Trigger word",
    "output.save_every_n_epochs": "Save every n epochs",
    "output.save_every_n_steps": "Save every n steps",
    "output.save_state": "Save training state",
    "output.save_diffusers": "Also save diffusers file",
    "output.logging_dir": "TensorBoard folder",
    "output.log_with": "Loss charts (TensorBoard)",
    "output.no_metadata": "No metadata",
    "pivotal.train_text_encoder_ti": "Train new token embeddings",
    "pivotal.train_text_encoder_ti_frac": "Embeddings: share of steps",
    "pivotal.token_abstraction": "Token placeholder",
    "pivotal.num_new_tokens_per_abstraction": "New tokens per placeholder",
    "pivotal.initializer_concept": "Initialise from words",
    "pivotal.text_encoder_ti_lr": "Embedding LR",
    "pivotal.adam_weight_decay_text_encoder": "Embedding weight decay",
    "pivotal.ti_std_pull": "Embedding norm pull",
    "pivotal.ti_fix_pooling": "Fix pooled embedding",
    "prior.with_prior_preservation": "Prior preservation",
    "prior.class_data_dir": "Class images folder",
    "prior.class_prompt": "Class prompt",
    "prior.num_class_images": "Class images",
    "prior.prior_loss_weight": "Prior loss weight",
    "prior.class_inference_steps": "Class image steps",
    "prior.sample_batch_size": "Class image batch",
    "preservation.diff_output_preservation": "Differential output preservation",
    "preservation.preservation_class": "Preservation class word",
    "preservation.preservation_trigger": "Preservation trigger",
    "preservation.preservation_weight": "Preservation weight",
    "preservation.blank_prompt_preservation": "Blank prompt preservation",
    "preservation.preservation_prompts": "Prompts to leave alone",
    "preservation.preservation_prompts_weight": "Their preservation weight",
    "preservation.blank_prompt_weight": "Blank prompt weight",
    "validation.sample_prompts": "Sample prompts file",
    "validation.signals": "Validation loss and drift per file",
    "validation.validation_split": "Held-out fraction",
    "validation.validation_images": "Held-out images folder",
    "validation.signal_timesteps": "Signal timesteps",
    "validation.drift_prompts": "Drift prompts",
    "validation.drift_threshold": "Drift threshold",
    "validation.sample_every_n_epochs": "Sample every n epochs",
    "validation.sample_every_n_steps": "Sample every n steps",
    "validation.sample_sampler": "Sample sampler",
    "validation.validation_prompt": "Validation prompts",
    "validation.validation_negative_prompt": "Validation negative prompt",
    "validation.num_validation_images": "Images per prompt",
    "validation.validation_resolution": "Validation size (w, h)",
    "validation.validation_epochs": "Validate every n epochs",
    "validation.validation_steps": "Validate every n steps",
    "validation.validation_inference_steps": "Sampling steps",
    "validation.validation_guidance_scale": "CFG scale",
    "validation.validation_seed": "Sample seed",
    "validation.final_grid": "Final epochs × strengths grid",
}
#: Words the generic rule writes in capitals or spells out.
_WORDS = {"lr": "LR", "ti": "TI", "ema": "EMA", "te": "TE", "unet": "U-Net", "vae": "VAE", "snr": "SNR",
          "sdpa": "SDPA", "num": "number of", "reso": "size", "n": "n", "adam": "Adam", "prodigy": "Prodigy:",
          "d": "d", "coef": "coefficient"}


def label(key: str) -> str:
    """The field's label: `LABELS`, else the key's name in words (`adam_beta1` → "Adam beta1")."""
    if key in LABELS:
        return LABELS[key]
    name = key.split(".", 1)[-1]
    words = [_WORDS.get(w, w) for w in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def placement() -> dict[str, str]:
    """Every key's place: "essentials" or its group's name (keys named nowhere: the last group)."""
    place = dict.fromkeys(ESSENTIALS, "essentials")
    for group, keys in GROUPS.items():
        place |= dict.fromkeys(keys, group)
    return place
