"""Named presets: partial configs applied before a run file's own values.

`kohya-character` is the kohya_ss community table that the public kohya_ss + AUTOMATIC1111 LoRA
walkthrough ("Fine-tuning with LoRA: create your own avatars & styles!") settles on after its
experiments ("To recap, here are the hyperparameters I finally settled on"): batch 1, 15
repeats (set by the folder name `15_<token>`), 5 epochs, text encoder lr 5e-5, U-Net lr 1e-4,
polynomial schedule, AdamW8bit, dim 128, alpha 128.
"""

from __future__ import annotations

from typing import Any

from lorakiln.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "kohya-character": {
        "train": {
            "train_batch_size": 1,
            "max_train_epochs": 5,
            "text_encoder_lr": 5e-5,
            "unet_lr": 1e-4,
            "lr_scheduler": "polynomial",
            "optimizer_type": "AdamW8bit",
        },
        "network": {"network_dim": 128, "network_alpha": 128},
        "output": {"save_every_n_epochs": 1},
    },
    # The kohya_ss walkthrough's DAdaptation advice: lr 1 (U-Net), 0.5 (text encoder), constant, decouple=True.
    "dadaptation": {
        "train": {
            "optimizer_type": "DAdaptation",
            "optimizer_args": ["decouple=True", "weight_decay=0.05"],
            "learning_rate": 1.0,
            "unet_lr": 1.0,
            "text_encoder_lr": 0.5,
            "lr_scheduler": "constant",
        },
        "network": {"network_dim": 128, "network_alpha": 128},
    },
    # The kohya_ss walkthrough's Adafactor advice: its own schedule, relative steps, lr 1 / 0.5.
    "adafactor": {
        "train": {
            "optimizer_type": "Adafactor",
            "optimizer_args": ["relative_step=True", "scale_parameter=True", "warmup_init=False"],
            "learning_rate": 1.0,
            "unet_lr": 1.0,
            "text_encoder_lr": 0.5,
            "lr_scheduler": "adafactor",
        },
        "network": {"network_dim": 128, "network_alpha": 128},
    },
    # The diffusers advanced SDXL recipe (`train_dreambooth_lora_sdxl_advanced.py`, Hugging Face blog
    # "LoRA training scripts of the world, unite!", Huggy example): Prodigy at lr 1.0 with its
    # recommended flags, pivotal tuning (2 new tokens per TOK, fixed halfway), min-SNR 5, rank 32,
    # batch 4, 1000 constant-rate steps.
    "pivotal-prodigy": {
        "train": {
            "optimizer_type": "Prodigy",
            "learning_rate": 1.0,
            "text_encoder_lr": 1.0,
            "lr_scheduler": "constant",
            "adam_beta1": 0.9,
            "adam_beta2": 0.99,
            "adam_weight_decay": 0.01,
            "prodigy_safeguard_warmup": True,
            "prodigy_use_bias_correction": True,
            "min_snr_gamma": 5.0,
            "train_batch_size": 4,
            "max_train_steps": 1000,
        },
        "network": {"network_dim": 32, "network_alpha": 32},
        "pivotal": {"train_text_encoder_ti": True, "token_abstraction": "TOK", "num_new_tokens_per_abstraction": 2,
                    "train_text_encoder_ti_frac": 0.5},
    },
}

#: One line per preset for `lorakiln presets` and the UI.
PRESET_DESCRIPTIONS: dict[str, str] = {
    "kohya-character": "the kohya_ss community table (kohya_ss + AUTOMATIC1111 LoRA walkthrough): batch 1, 5 epochs, TE 5e-5, U-Net 1e-4, "
    "polynomial, AdamW8bit, dim 128 / alpha 128 (name the folder 15_<token>)",
    "dadaptation": "DAdaptAdam with decouple, lr 1 / TE 0.5, constant schedule",
    "adafactor": "Adafactor with relative steps and its own schedule, lr 1 / TE 0.5",
    "pivotal-prodigy": "the diffusers advanced SDXL recipe (`train_dreambooth_lora_sdxl_advanced.py`): "
    "Prodigy lr 1.0 (β2 0.99, decay 0.01, safeguard warmup, bias correction), pivotal tuning of TOK (2 new tokens, fixed halfway), min-SNR 5, rank 32, batch 4, 1000 steps",
}


def get_preset(name: str) -> dict[str, Any]:
    """Return a deep copy of preset `name`, or raise an error listing the valid names."""
    import copy

    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None
