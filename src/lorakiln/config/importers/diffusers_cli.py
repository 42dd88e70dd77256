"""diffusers DreamBooth-LoRA command lines (`train_dreambooth_lora_sdxl_advanced.py` and kin).

The goal is a run that trains as the command did, so besides the flags given we replay the
script's own defaults where they differ from lorakiln's (a missing `--lr_warmup_steps` meant
500 warmup steps there; a missing `--rank` meant rank 4 with alpha 4). Those keys carry a
`script default` comment. The defaults are those of the advanced scripts (SDXL and SD 1.5 share
them); a command that names another script gets its flags only, and a note saying so.

Semantics worth knowing (from the script sources):
* `--learning_rate` is the U-Net LoRA's rate; `--text_encoder_lr` the text side's (the text
  LoRA with `--train_text_encoder`, else the new embeddings with `--train_text_encoder_ti`).
* Without `--train_text_encoder` the text encoders get no LoRA: `network_train_unet_only`.
* `--rank` sets `lora_alpha = rank` too; the LoRA file is `<output_dir name>.safetensors` plus
  `pytorch_lora_weights.safetensors`, which `save_diffusers` reproduces.
* `--dataset_name` may be a local folder, loaded as an ImageFolder: that is `train_data_dir`;
  the other way round, an `--instance_data_dir` that is no folder here but a Hub id (the B-LoRA
  README's `linoyts/B-LoRA_teddy_bear`) is imported as `dataset_name`, with a header note.
* What a script hard-codes is listed as not reproduced: the B-LoRA script
  (`train_dreambooth_b-lora_sdxl.py`, diffusers advanced_diffusion_training README) puts its
  LoRA on two U-Net blocks only, with no option saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakiln.config.importers.cmdline import CommandLine, Flag, map_launcher
from lorakiln.config.importers.draft import LAUNCHER, LOGGING_SERVICE, NO_UPLOAD, Draft

#: Flags with a same-meaning lorakiln key (value converted by the schema).
DIRECT: dict[str, str] = {
    "pretrained_model_name_or_path": "model.pretrained_model",
    "pretrained_vae_model_name_or_path": "model.vae",
    "train_data_dir": "data.train_data_dir",
    "instance_prompt": "data.instance_prompt",
    "caption_column": "data.caption_column",
    "repeats": "data.repeats",
    "resolution": "data.resolution",
    "random_flip": "data.flip_aug",
    "cache_latents": "data.cache_latents",
    "lora_dropout": "network.network_dropout",
    "train_batch_size": "train.train_batch_size",
    "num_train_epochs": "train.max_train_epochs",
    "max_train_steps": "train.max_train_steps",
    "text_encoder_lr": "train.text_encoder_lr",
    "train_text_encoder_frac": "train.train_text_encoder_frac",
    "lr_scheduler": "train.lr_scheduler",
    "lr_warmup_steps": "train.lr_warmup_steps",
    "lr_num_cycles": "train.lr_scheduler_num_cycles",
    "lr_power": "train.lr_scheduler_power",
    "adam_beta1": "train.adam_beta1",
    "adam_beta2": "train.adam_beta2",
    "adam_weight_decay": "train.adam_weight_decay",
    "adam_epsilon": "train.adam_epsilon",
    "prodigy_beta3": "train.prodigy_beta3",
    "prodigy_decouple": "train.prodigy_decouple",
    "prodigy_use_bias_correction": "train.prodigy_use_bias_correction",
    "prodigy_safeguard_warmup": "train.prodigy_safeguard_warmup",
    "snr_gamma": "train.min_snr_gamma",
    "max_grad_norm": "train.max_grad_norm",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "mixed_precision": "train.mixed_precision",
    "seed": "train.seed",
    "noise_offset": "train.noise_offset",
    "train_text_encoder_ti": "pivotal.train_text_encoder_ti",
    "train_text_encoder_ti_frac": "pivotal.train_text_encoder_ti_frac",
    "token_abstraction": "pivotal.token_abstraction",
    "num_new_tokens_per_abstraction": "pivotal.num_new_tokens_per_abstraction",
    "initializer_concept": "pivotal.initializer_concept",
    "adam_weight_decay_text_encoder": "pivotal.adam_weight_decay_text_encoder",
    "with_prior_preservation": "prior.with_prior_preservation",
    "class_data_dir": "prior.class_data_dir",
    "class_prompt": "prior.class_prompt",
    "num_class_images": "prior.num_class_images",
    "prior_loss_weight": "prior.prior_loss_weight",
    "sample_batch_size": "prior.sample_batch_size",
    "validation_prompt": "validation.validation_prompt",
    "num_validation_images": "validation.num_validation_images",
    "validation_epochs": "validation.validation_epochs",
    "validation_steps": "validation.validation_steps",
}

#: Flags with no lorakiln equivalent, and why.
UNSUPPORTED: dict[str, str] = {
    "report_to": LOGGING_SERVICE,
    "tracker_project_name": LOGGING_SERVICE,
    "push_to_hub": NO_UPLOAD,
    "hub_model_id": NO_UPLOAD,
    "hub_token": NO_UPLOAD,
    "revision": "lorakiln loads a hub model's default revision; download the one you want and point "
                "model.pretrained_model at the folder",
    "variant": "lorakiln loads a hub model's default weights; download the variant and point "
               "model.pretrained_model at the folder",
    "dataset_config_name": "a hub dataset's configuration cannot be chosen; lorakiln loads the default one",
    "cache_dir": "lorakiln caches hub datasets under the output folder and models in the Hugging Face cache",
    "checkpoints_total_limit": "lorakiln keeps every saved checkpoint",
    "resume_from_checkpoint": "accelerate checkpoints are not lorakiln states; resume lorakiln runs with "
                              "train.resume",
    "scale_lr": "learning rates are not scaled by batch x accumulation x GPUs; multiply "
                "train.learning_rate yourself",
    "do_edm_style_training": "EDM-style training is not supported",
    "use_dora": "diffusers' DoRA (PEFT, one magnitude per output channel, loaded by diffusers) is not "
                "mapped: lorakiln's network.dora_wd keeps one per input channel for AUTOMATIC1111/ComfyUI and "
                "cannot be saved for diffusers",
    "use_blora": "B-LoRA (LoRA on two chosen U-Net blocks only) is not reproduced: lorakiln adapts every "
                 "attention block",
    "lora_unet_blocks": "LoRA on selected U-Net blocks is not supported",
    "prediction_type": "the prediction type comes from the base model's scheduler",
    "max_train_samples": "lorakiln trains on every image",
    "image_column": "lorakiln reads images from an ImageFolder's file_name column or a hub dataset's first "
                    "column",
    "prior_generation_precision": "class images are generated in lorakiln's own precision",
}

#: Flags whose effect lorakiln has anyway, or that only tune speed: nothing to set.
NOTED: dict[str, str] = {
    "enable_xformers_memory_efficient_attention": "lorakiln uses PyTorch SDPA attention (train.sdpa)",
    "allow_tf32": LAUNCHER,
    "dataloader_num_workers": LAUNCHER,
    "local_rank": LAUNCHER,
    "center_crop": "lorakiln centre-crops to the bucket by default (random crops: data.random_crop)",
    "image_interpolation_mode": "lorakiln resizes with Lanczos",
    "crops_coords_top_left_h": "SDXL crop conditioning is taken from each image's actual crop",
    "crops_coords_top_left_w": "SDXL crop conditioning is taken from each image's actual crop",
}

#: Defaults of the advanced scripts that differ from lorakiln's (other flags: same default).
SCRIPT_DEFAULTS: dict[str, str] = {
    "resolution": "1024",
    "train_batch_size": "4",
    "lr_warmup_steps": "500",
    "rank": "4",
    "adam_weight_decay": "1e-4",
    "checkpointing_steps": "500",
    "output_dir": "lora-dreambooth-model",
}
ADVANCED_SCRIPTS = ("train_dreambooth_lora_sdxl_advanced.py", "train_dreambooth_lora_sd15_advanced.py")
#: B-LoRA's blocks (Frenkel et al. 2024, "Implicit Style-Content Separation using B-LoRA"), fixed
#: in the B-LoRA training script: content in up_blocks.0.attentions.0, style in .1.
BLORA_BLOCKS = ("up_blocks.0.attentions.0 (content)", "up_blocks.0.attentions.1 (style)")
_BLORA_SCRIPT = re.compile(r"b[-_]?lora", re.IGNORECASE)
OPTIMIZERS = {"adamw": "AdamW", "prodigy": "Prodigy"}
_BOOL_TYPED = {"prodigy_decouple", "prodigy_use_bias_correction", "prodigy_safeguard_warmup"}


def _value(flag: Flag) -> Any:
    """A bare flag is `True`; one value is the string; several stay a list."""
    return True if not flag.values else flag.values[0] if len(flag.values) == 1 else list(flag.values)


def _is_local(value: str, base_dir: Path) -> bool:
    """`--dataset_name` names a folder (the script then loads it as an ImageFolder) or a hub id."""
    return (value.startswith((".", "/", "~", "\\")) or (len(value) > 1 and value[1] == ":")
            or Path(value).expanduser().exists() or (base_dir / value).exists())


class _Mapper:
    def __init__(self, cmd: CommandLine, draft: Draft, base_dir: Path, source_dir: Path | None = None) -> None:
        self.cmd, self.d, self.base_dir, self.source_dir = cmd, draft, base_dir, source_dir
        self.given: dict[str, Flag] = {}
        for flag in cmd.flags:
            if flag.name in self.given:
                draft.note(flag.text(), f"--{flag.name} is given more than once; the last one counts")
            self.given[flag.name] = flag
        self.special: dict[str, Callable[[Any, str], None]] = {
            "learning_rate": self._learning_rate, "rank": self._rank, "optimizer": self._optimizer,
            "use_8bit_adam": self._optimizer, "dataset_name": self._dataset, "output_dir": self._output_dir,
            "logging_dir": self._logging_dir, "checkpointing_steps": self._checkpointing,
            "train_text_encoder": self._train_text_encoder, "instance_data_dir": self._instance_dir,
        }

    def value(self, name: str, default: Any = None) -> Any:
        flag = self.given.get(name)
        return default if flag is None else _value(flag)

    def run(self, defaults: bool) -> None:
        for flag in self.given.values():
            self.one(flag.name, _value(flag), flag.text())
        for word in self.cmd.stray:
            self.d.skip(word, "not an option (the script's argparse would reject it)")
        map_launcher(self.cmd, self.d)
        self._implied()
        self._prodigy_rates()
        if defaults:
            for name, value in SCRIPT_DEFAULTS.items():
                if name not in self.given:
                    self.one(name, value, f"script default --{name}={value}")
            self._conditional_defaults()

    def one(self, name: str, value: Any, origin: str) -> None:
        if name in self.special:
            self.special[name](value, origin)
        elif name in DIRECT:
            self.d.put(DIRECT[name], value, origin)
            if name in _BOOL_TYPED and str(value).lower() in ("false", "0", "no"):
                self.d.note(origin, "argparse `type=bool` reads any non-empty text as True, so the script "
                            "ran with True; imported as written (False)")
        elif name == "image_column" and value == "image":
            self.d.note(origin, "the script's default: the image of an ImageFolder row, as lorakiln reads it")
        elif name == "report_to" and value == "tensorboard":
            self.d.note(origin, "lorakiln writes TensorBoard logs too (output.logging_dir)")
        elif name in UNSUPPORTED:
            self.d.skip(origin, UNSUPPORTED[name])
        elif name in NOTED:
            self.d.note(origin, NOTED[name])
        else:
            self.d.skip(origin, "not an option of the diffusers LoRA scripts that this importer knows")

    def _learning_rate(self, value: Any, origin: str) -> None:
        if self.d.put("train.learning_rate", value, origin):
            self.d.put("train.unet_lr", value, origin + " (the script's U-Net rate)")

    def _rank(self, value: Any, origin: str) -> None:
        if self.d.put("network.network_dim", value, origin):
            self.d.put("network.network_alpha", value, origin + " (the script uses lora_alpha = rank)")

    def _optimizer(self, _value: Any, origin: str) -> None:
        if self.d.has("train.optimizer_type"):
            return  # --optimizer and --use_8bit_adam are read together
        name = str(self.value("optimizer", "adamW"))
        chosen = OPTIMIZERS.get(name.lower())
        if chosen is None:
            self.d.note(origin, f"the script falls back to AdamW for an unknown optimizer {name!r}")
            chosen = "AdamW"
        if self.value("use_8bit_adam"):
            if chosen == "AdamW":
                chosen = "AdamW8bit"
            else:
                self.d.note("--use_8bit_adam", "ignored by the script when the optimizer is not AdamW")
        origin = " ".join(f.text() for n, f in self.given.items() if n in ("optimizer", "use_8bit_adam"))
        self.d.put("train.optimizer_type", chosen, origin)

    def _dataset(self, value: Any, origin: str) -> None:
        if not _is_local(str(value), self.base_dir):
            self.d.put("data.dataset_name", value, origin)
        else:
            self.d.put("data.train_data_dir", value, origin + " (a local folder: read as an ImageFolder)")

    def _instance_dir(self, value: Any, origin: str) -> None:
        """A folder; but a value that is no folder here and has a Hub id's shape is a Hub dataset."""
        from lorakiln.models.hub_id import looks_like_hub_id

        text = str(value)
        here = [self.base_dir, *([self.source_dir] if self.source_dir else [])]
        owner = text.split("/", 1)[0]  # a local `data/dog` has its `data/` folder here
        local = _is_local(text, self.base_dir) or any((d / text).exists() or (d / owner).is_dir() for d in here)
        if local or not looks_like_hub_id(text):
            self.d.put("data.train_data_dir", value, origin)
            return
        self.d.put("data.dataset_name", value, origin + " (not a folder here: a Hugging Face Hub dataset id)")
        self.d.header.append(f"{origin} is not a folder here and has the shape of a Hugging Face Hub id, so it "
                             "was imported as data.dataset_name (downloaded once; needs network and the `datasets` "
                             "package). If it is a local folder, set data.train_data_dir to it instead.")

    def _output_dir(self, value: Any, origin: str) -> None:
        if self.d.put("output.output_dir", value, origin):
            name = Path(str(value).rstrip("/\\")).name
            self.d.put("output.output_name", name, origin + f" (the script names the LoRA {name}.safetensors)")
            self.d.put("output.save_diffusers", True, "the script also writes pytorch_lora_weights.safetensors")

    def _logging_dir(self, value: Any, origin: str) -> None:
        out = str(self.value("output_dir", SCRIPT_DEFAULTS["output_dir"]))
        self.d.put("output.logging_dir", str(Path(out) / str(value)), origin + " (the script puts it under "
                   "--output_dir)")

    def _checkpointing(self, value: Any, origin: str) -> None:
        if self.d.put("output.save_every_n_steps", value, origin):
            self.d.put("output.save_state", True, origin + " (a checkpoint is a resumable state)")

    def _train_text_encoder(self, value: Any, origin: str) -> None:
        self.d.put("network.network_train_unet_only", False, origin)
        self.d.note(origin, "the script puts a LoRA on the text encoders' attention (q/k/v/out); lorakiln's "
                    "text-encoder LoRA also covers the MLP layers")

    def _implied(self) -> None:
        """Behaviour the script has without a flag for it."""
        if "train_text_encoder" not in self.given:
            self.d.put("network.network_train_unet_only", True, "no --train_text_encoder: the script trains "
                       "no text-encoder LoRA")
        script = self.cmd.script
        if "caption_column" not in self.given and (script is None or "dreambooth" in script):
            self.d.put("data.caption_column", "", "no --caption_column: the script captions every image "
                       "with --instance_prompt")
        if "seed" not in self.given:
            self.d.note("(no --seed)", "the script drew a random seed; lorakiln uses train.seed = 42")
        if "mixed_precision" not in self.given and not self.d.has("train.mixed_precision"):
            self.d.note("(no --mixed_precision)", "the script used `accelerate config`'s precision; "
                        "lorakiln defaults to train.mixed_precision = \"no\"")

    def _prodigy_rates(self) -> None:
        """Prodigy learns one step size: with --train_text_encoder the script replaces the text
        rate by --learning_rate; with pivotal tuning a different rate makes Prodigy stop at the
        first step (in the script and in lorakiln alike)."""
        if self.d.get("train.optimizer_type") != "Prodigy" or "text_encoder_lr" not in self.given:
            return
        lr, te = self.d.get("train.learning_rate", 1e-4), self.d.get("train.text_encoder_lr")
        if te == lr:
            return
        origin = self.given["text_encoder_lr"].text()
        if "train_text_encoder" in self.given:
            self.d.put("train.text_encoder_lr", lr, origin + " (with Prodigy the script uses --learning_rate)")
        else:
            self.d.note(origin, "Prodigy needs one learning rate for every part; set it equal to "
                        "learning_rate (the script would stop at its first step as well)")

    def _conditional_defaults(self) -> None:
        prodigy = self.d.get("train.optimizer_type") == "Prodigy"
        text_side = "train_text_encoder" in self.given or self.value("train_text_encoder_ti")
        if text_side and not prodigy and "text_encoder_lr" not in self.given:
            self.d.put("train.text_encoder_lr", "5e-6", "script default --text_encoder_lr=5e-6")
        if prodigy:
            for name in ("prodigy_use_bias_correction", "prodigy_safeguard_warmup"):
                if name not in self.given:
                    self.d.put(DIRECT[name], True, f"script default --{name}=True")
        if "validation_prompt" in self.given and "validation_epochs" not in self.given:
            self.d.put("validation.validation_epochs", "50", "script default --validation_epochs=50")
        if "optimizer" not in self.given and "use_8bit_adam" not in self.given:
            self.d.put("train.optimizer_type", "AdamW", "script default --optimizer=adamW")


def _hard_coded(script: str | None, given: set[str], draft: Draft) -> None:
    """What a script does without an option for it, and lorakiln does not reproduce."""
    if script and _BLORA_SCRIPT.search(script):
        draft.skip(f"(fixed in {script}) LoRA on {' and '.join(BLORA_BLOCKS)} only",
                   "B-LoRA's block restriction is not reproduced: lorakiln adapts every attention block, so the "
                   "file cannot be split into a content and a style B-LoRA afterwards")
    if (script and _BLORA_SCRIPT.search(script)) or "use_blora" in given:
        draft.header.append("Not reproduced: B-LoRA trains the LoRA on two U-Net blocks only ("
                            + ", ".join(BLORA_BLOCKS) + "); this run adapts every attention block like a "
                            "regular LoRA.")


def map_diffusers(cmd: CommandLine, draft: Draft, base_dir: Path, source_dir: Path | None = None) -> None:
    """Fill `draft` from a parsed diffusers training command; `source_dir` is the folder of the
    file it was read from (a local `--instance_data_dir` may be there)."""
    script = cmd.script
    defaults = script is None or script in ADVANCED_SCRIPTS
    if script is None:
        draft.header.append("No script is named: the defaults of train_dreambooth_lora_sdxl_advanced.py were "
                            "assumed for options not given.")
    elif not defaults:
        draft.header.append(f"Only the options given were imported: the defaults of {script} are not known "
                            "to this importer (lorakiln's apply).")
    _hard_coded(script, {f.name for f in cmd.flags}, draft)
    _Mapper(cmd, draft, base_dir, source_dir).run(defaults)
