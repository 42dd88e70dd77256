"""The typed run configuration: one TOML file per run, validated before any work starts.

Field names follow kohya sd-scripts (`network_dim`, `unet_lr`, `lr_scheduler`, ...) so a
kohya_ss user recognises every knob; they are grouped in sections (`[model]`, `[data]`,
`[network]`, `[train]`, `[output]`). Every field carries its documentation in `description`,
from which `docs/config.md` is generated (`lorakiln config doc`). `extra="forbid"` turns a
typo into an error that names it (see `load.py` for the nearest-key suggestion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from lorakiln.config.cross_checks import check_run
from lorakiln.config.network_schema import NetworkConfig
from lorakiln.config.preservation import PreservationConfig
from lorakiln.config.section import Section
from lorakiln.config.signals_schema import SignalFields, one_or_many
from lorakiln.models.hub_id import looks_like_hub_id


class ModelConfig(Section):
    pretrained_model: str = Field(
        description="Base model: a diffusers folder, a single-file .safetensors checkpoint "
        "(LDM layout, as downloaded from model sites) or a hub id such as "
        "`stable-diffusion-v1-5/stable-diffusion-v1-5` (needs network). `tiny:sd1` / `tiny:sdxl` "
        "build the tiny test models on first use; `random:sd15` / `random:sdxl` are the full "
        "architectures with random weights (benchmarks). kohya/diffusers' "
        "`pretrained_model_name_or_path` is accepted too.",
        validation_alias=AliasChoices("pretrained_model", "pretrained_model_name_or_path"),
    )
    vae: str | None = Field(None, description="Optional VAE to use instead of the base model's "
                            "(a diffusers VAE folder, a single-file .safetensors or a hub id), e.g. an "
                            "fp16-safe SDXL VAE. Also accepted as `pretrained_vae` / "
                            "`pretrained_vae_model_name_or_path`.",
                            validation_alias=AliasChoices("vae", "pretrained_vae",
                                                          "pretrained_vae_model_name_or_path"))
    config_dir: str | None = Field(None, description="diffusers folder whose configs and tokenizer "
                                   "describe a single-file checkpoint; by default they are inferred.")
    allow_pickle: bool = Field(False, description="Allow loading pickled .ckpt/.pt/.bin files. Pickles "
                               "can run arbitrary code when loaded: enable only for files you trust.")
    clip_skip: int = Field(1, ge=1, le=12, description="Use the output of the N-th last text-encoder "
                           "layer (1 = last, 2 = the penultimate, as A1111's 'Clip skip').")


class DataConfig(Section):
    train_data_dir: str | None = Field(None, description="Training images: a kohya folder of "
                                       "`<repeats>_<token>[ <class>]` subfolders with same-stem caption "
                                       "files, or an image folder with `metadata.jsonl`/`metadata.csv` "
                                       "(ImageFolder layout), or plain images with `instance_prompt`.")
    dataset_name: str | None = Field(None, description="A hub dataset instead of a folder (needs the "
                                     "`datasets` package and network once; cached under the output folder).")
    caption_column: str = Field("prompt", description="Caption column of metadata.jsonl/csv or the hub "
                                "dataset (\"\" to use `instance_prompt` for every image).")
    image_column: str = Field("file_name", description="Image column of metadata.jsonl/csv.")
    instance_prompt: str | None = Field(None, description="Caption for images without one (ImageFolder), "
                                        "e.g. \"a photo of TOK dog\".")
    repeats: int = Field(1, ge=1, description="Repeats of each image per epoch for ImageFolder/hub "
                         "datasets (kohya folders take repeats from their names).")
    caption_extension: str = Field(".txt", description="Extension of caption files next to the "
                                   "images (kohya_ss 'Caption extension').")
    check_images: bool = Field(True, description="Before training, measure every image for `lorakiln "
                               "dataset check`'s warnings (low resolution, blur, near-duplicates, grayscale); "
                               "turn off to skip that pass on very large datasets.")
    resolution: tuple[int, int] = Field((512, 512), description="Training resolution `W,H` (e.g. "
                                        "`\"512,512\"`, `768`, or `[768, 768]`); its area bounds the buckets.")
    enable_bucket: bool = Field(True, description="Aspect-ratio bucketing: images are resized to the "
                                "bucket with the nearest aspect ratio instead of square-cropped.")
    min_bucket_reso: int = Field(256, ge=64, description="Smallest bucket side in pixels.")
    max_bucket_reso: int = Field(1024, ge=64, description="Largest bucket side in pixels.")
    bucket_reso_steps: int = Field(64, ge=8, description="Bucket sides are multiples of this (64 as kohya).")
    bucket_no_upscale: bool = Field(False, description="Never upscale an image to fit a bucket; small "
                                    "images get their own smaller bucket.")
    shuffle_caption: bool = Field(False, description="Shuffle comma-separated caption tags each step.")
    keep_tokens: int = Field(0, ge=0, description="Keep the first N tags in place when shuffling or "
                             "dropping (e.g. 1 keeps the trigger token first).")
    caption_dropout_rate: float = Field(0.0, ge=0.0, le=1.0, description="Probability of training a "
                                        "sample with an empty caption (helps unconditional guidance).")
    caption_tag_dropout_rate: float = Field(0.0, ge=0.0, le=1.0, description="Probability of dropping "
                                            "each non-kept tag.")
    caption_dropout_every_n_epochs: int = Field(0, ge=0, description="Drop all captions every N-th "
                                                "epoch (0 = never).")
    flip_aug: bool = Field(False, description="Random horizontal flips (with cached latents both "
                           "orientations are cached). Avoid for asymmetric subjects, e.g. a hair parting.")
    random_crop: bool = Field(False, description="Random instead of centre crop (not with cached latents).")
    cache_latents: bool = Field(True, description="Encode every image with the VAE once before "
                                "training (removes the VAE from each step: ~+65% speed at 512 px).")
    cache_text_encoder_outputs: bool = Field(True, description="Reuse text-encoder outputs per caption "
                                             "while the text encoders are frozen (U-Net-only training, after "
                                             "the pivots) and captions are not shuffled or dropped.")
    cache_latents_to_disk: bool = Field(False, description="Also keep cached latents on disk "
                                        "(`<output_dir>/.cache/latents`), keyed by image content, VAE and bucket.")

    @field_validator("resolution", mode="before")
    @classmethod
    def _parse_resolution(cls, value: object) -> object:
        """Accept `512`, `"512"`, `"512,768"` and `[512, 768]` as kohya_ss does."""
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"resolution {value!r} is not 'W,H' such as '512,512'")
            return (int(parts[0]), int(parts[1]))
        return value

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 64 or any(v % 8 for v in value):
            raise ValueError(f"resolution {value} must be at least 64 px and a multiple of 8 (VAE factor)")
        return value

    @field_validator("caption_extension")
    @classmethod
    def _dot_extension(cls, value: str) -> str:
        return value if value.startswith(".") else "." + value


class TrainConfig(Section):
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate used for any part without its "
                                 "own rate; ignored when both unet_lr and text_encoder_lr are set.")
    mode: Literal["lora", "full"] = Field("lora", description="`lora` trains an adapter file; `full` "
                                         "fine-tunes every U-Net weight (and the text encoder unless "
                                         "text_encoder_lr = 0), like sd-scripts' fine_tune.py, and writes a "
                                         "whole model (single file, plus a diffusers folder with "
                                         "save_diffusers). `full` also pretrains from scratch (the toy world).")
    fsdp: bool = Field(False, description="With train.mode = 'full' on several processes: shard the "
                       "U-Net's weights, gradients and optimizer state over the processes (PyTorch FSDP, "
                       "fully_shard per U-Net block; ZeRO-3), so a model that does not fit one GPU trains "
                       "on several. `accelerate launch` with an FSDP config turns it on too. Needs AdamW, "
                       "SGD or SGDNesterov and mixed_precision 'bf16' or 'no'; LoRA runs are data-parallel.")
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="Keep an exponential moving average "
                                    "of the trained weights with this decay (e.g. 0.999) and save it instead "
                                    "of the last weights; helps most when pretraining.")
    unet_lr: float | None = Field(None, gt=0, description="Learning rate of the U-Net LoRA.")
    text_encoder_lr: float | None = Field(None, ge=0, description="Learning rate of the text-encoder "
                                          "LoRA (usually lower than unet_lr, e.g. 5e-5). 0 freezes it.")
    train_text_encoder_frac: float = Field(1.0, gt=0.0, le=1.0, description="Stop training the "
                                           "text-encoder LoRA after this fraction of the steps (diffusers' "
                                           "`train_text_encoder_frac`); the U-Net LoRA trains on.")
    train_batch_size: int = Field(1, ge=1, description="Images per step (each batch comes from one bucket).")
    max_train_epochs: int = Field(1, ge=1, description="Epochs: passes over images × repeats.")
    max_train_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps "
                                        "(overrides the epoch arithmetic).")
    optimizer_type: str = Field("AdamW", description="AdamW, AdamW8bit, Adafactor, "
                                          "DAdaptation (DAdaptAdam), Prodigy, Lion.")
    optimizer_args: list[str] = Field(default_factory=list, description="Extra optimizer arguments as "
                                      "kohya `key=value` strings, e.g. `[\"decouple=True\", \"weight_decay=0.05\"]`.")
    lr_scheduler: str = Field("constant", description="constant, constant_with_warmup, linear, "
                                        "cosine, cosine_with_restarts, polynomial, adafactor.")
    lr_warmup_steps: float = Field(0, ge=0, description="Warmup steps (a value below 1 is a fraction of "
                                   "the total steps).")
    lr_scheduler_num_cycles: int = Field(1, ge=1, description="Restarts for cosine_with_restarts.")
    lr_scheduler_power: float = Field(1.0, gt=0, description="Power of the polynomial schedule.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: "
                                         "-30-50% memory for ~+70% time.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Autocast precision of the "
                                                           "frozen model (fp16 uses loss scaling). LoRA "
                                                           "weights stay fp32.")
    seed: int = Field(42, description="Seed for weights init, data order, noise and timesteps.")
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description="Offset noise (crosslabs): adds "
                                "per-channel constant noise so the model can make darker/brighter images.")
    min_snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting (Hang et al. "
                                        "2023); 5 is the recommended value. `snr_gamma` (diffusers' "
                                        "name) is accepted too.",
                                        validation_alias=AliasChoices("min_snr_gamma", "snr_gamma"))
    adam_beta1: float | None = Field(None, ge=0.0, lt=1.0, description="β1 of Adam-style optimizers "
                                     "(AdamW, Prodigy, Lion...); unset keeps the optimizer's default.")
    adam_beta2: float | None = Field(None, ge=0.0, lt=1.0, description="β2 (the diffusers "
                                     "advanced SDXL recipe uses 0.99 with Prodigy).")
    adam_weight_decay: float | None = Field(None, ge=0.0, description="Weight decay (diffusers "
                                            "advanced SDXL recipe: 0.01 "
                                            "with Prodigy); unset keeps the optimizer's default.")
    adam_epsilon: float | None = Field(None, gt=0.0, description="ε of Adam-style optimizers.")
    prodigy_safeguard_warmup: bool | None = Field(None, description="Prodigy `safeguard_warmup` "
                                                  "(diffusers advanced SDXL recipe: true).")
    prodigy_use_bias_correction: bool | None = Field(None, description="Prodigy `use_bias_correction` "
                                                     "(diffusers advanced SDXL recipe: true).")
    prodigy_decouple: bool | None = Field(None, description="Prodigy `decouple` (AdamW-style decay).")
    prodigy_beta3: float | None = Field(None, ge=0.0, lt=1.0, description="Prodigy `beta3` (step-size "
                                        "EMA; default sqrt(beta2)).")
    prodigy_d_coef: float | None = Field(None, gt=0.0, description="Prodigy `d_coef`: scales the "
                                         "estimated step size.")
    sdpa: bool = Field(True, description="Use PyTorch scaled-dot-product attention.")
    resume: str | None = Field(None, description="A state folder written by save_state to continue "
                               "exactly where it stopped.")
    detect_anomaly_every: int = Field(1, ge=1, description="Check the loss for NaN/inf every N steps "
                                      "(a check costs a device sync).")


class OutputConfig(Section):
    output_dir: str = Field("output", description="Folder for LoRA files, state and the resolved config.")
    output_name: str = Field("last", description="File stem: `<name>.safetensors` at the end, "
                             "`<name>-000001.safetensors` per saved epoch.")
    save_precision: Literal["fp16", "bf16", "float"] = Field("fp16", description="dtype of saved "
                                                             "LoRA tensors.")
    save_every_n_epochs: int | None = Field(None, ge=1, description="Save a numbered LoRA every N epochs.")
    save_every_n_steps: int | None = Field(None, ge=1, description="Save a step-numbered LoRA every N steps.")
    save_state: bool = Field(False, description="Also save the full training state (for `resume`) "
                             "whenever a LoRA is saved.")
    save_diffusers: bool = Field(False, description="Also write diffusers `pytorch_lora_weights.safetensors` "
                                 "(with train.mode = 'full': a diffusers model folder `<output_name>/`).")
    logging_dir: str | None = Field(None, description="TensorBoard log folder (default `<output_dir>/logs`).")
    log_with: Literal["tensorboard", "none"] = Field("tensorboard", description="`tensorboard` writes loss, "
                                                     "learning rates and sample images for TensorBoard "
                                                     "(kohya's `--log_with`); `none` writes no TensorBoard "
                                                     "files. The JSON events file (`--events`) is written "
                                                     "either way.")
    trigger_phrase: str | None = Field(None, description="Written as `modelspec.trigger_phrase`.")
    no_metadata: bool = Field(False, description="Write only the minimal ss_* metadata keys.")

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\:<>"):
            raise ValueError(f"output_name {value!r} must be a plain file stem such as 'last'")
        return value


class PivotalConfig(Section):
    """Pivotal tuning (as in the diffusers advanced SDXL recipe): new tokens trained as textual inversion, then the LoRA."""

    train_text_encoder_ti: bool = Field(False, description="Insert new tokens for `token_abstraction` "
                                        "in every text encoder and train their embeddings.")
    train_text_encoder_ti_frac: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of the "
                                              "steps after which the new embeddings stop training (the pivot).")
    token_abstraction: str = Field("TOK", description="The word used in captions and prompts for the "
                                   "concept; replaced by the new tokens `<s0><s1>`. Comma-separate "
                                   "several concepts.")
    num_new_tokens_per_abstraction: int = Field(2, ge=1, le=16, description="New tokens per abstraction.")
    initializer_concept: str | None = Field(None, description="Initialise the new embeddings from "
                                            "this word's tokens instead of random vectors.")
    text_encoder_ti_lr: float | None = Field(None, gt=0, description="Learning rate of the new "
                                             "embeddings (default: text_encoder_lr, else learning_rate).")
    adam_weight_decay_text_encoder: float | None = Field(None, ge=0, description="Weight decay of the "
                                                         "new embeddings (default: the optimizer's).")
    ti_std_pull: float = Field(0.1, ge=0.0, description="Per-step pull of the new embeddings' std "
                               "toward the table's (the diffusers script's rule); 0 disables.")
    ti_fix_pooling: bool = Field(True, description="Pool encoders at the end-of-text token as "
                                 "A1111/ComfyUI do, even with new tokens present.")


class PriorConfig(Section):
    """Prior preservation (DreamBooth, Ruiz et al. 2023): class images keep the class prior."""

    with_prior_preservation: bool = Field(False, description="Add class images to every batch and "
                                          "their loss × prior_loss_weight.")
    class_data_dir: str | None = Field(None, description="Class images (flat, with optional captions, "
                                       "or kohya `<repeats>_<class>` regularisation folders). Missing "
                                       "images are generated with the base model once and kept here.")
    class_prompt: str | None = Field(None, description="Prompt of the class images, e.g. \"a photo of "
                                     "a dog\" (used to generate them and as their caption).")
    num_class_images: int = Field(100, ge=1, description="Class images to use (generated if fewer exist).")
    prior_loss_weight: float = Field(1.0, ge=0.0, description="Weight of the class-image loss.")
    class_inference_steps: int = Field(25, ge=1, le=500, description="Sampling steps for generated "
                                       "class images.")
    sample_batch_size: int = Field(4, ge=1, description="Images per generation call.")


class ValidationConfig(Section, SignalFields):
    validation_prompt: list[str] = Field(default_factory=list, description="Prompts to render while "
                                         "training (a string or a list); empty disables validation.")
    num_validation_images: int = Field(4, ge=1, le=64, description="Images per validation prompt.")
    validation_epochs: int = Field(1, ge=1, description="Render every N epochs (and at the end).")
    validation_steps: int | None = Field(None, ge=1, description="Also render every N optimizer steps.")
    validation_negative_prompt: str = Field("", description="Negative prompt for validation images.")
    validation_inference_steps: int = Field(25, ge=1, le=500, description="Sampling steps (Euler).")
    validation_guidance_scale: float = Field(7.0, ge=0.0, le=50.0, description="CFG scale.")
    validation_resolution: tuple[int, int] | None = Field(None, description="`W,H` of validation images "
                                                          "(default: the training resolution).")
    validation_seed: int = Field(0, description="Seed of the first validation image (then +1 each), the "
                                 "same at every validation so images are comparable across epochs.")
    sample_prompts: str | None = Field(None, description="kohya sample-prompts file: one prompt per line "
                                       "with options `--n` negative, `--w`/`--h` size, `--s` steps, `--l` "
                                       "CFG, `--d` seed, `--ss` sampler (A1111 emphasis works); `#` starts a comment.")
    sample_every_n_epochs: int | None = Field(None, ge=1, description="Render the sample prompts every N epochs.")
    sample_every_n_steps: int | None = Field(None, ge=1, description="Render the sample prompts every N steps.")
    sample_sampler: str = Field("Euler a", description="Sampler for samples and validation: an A1111 name "
                                "(`DPM++ 2M Karras`) or an sd-scripts one (`euler_a`, `k_dpm_2`, `ddim`).")
    final_grid: bool = Field(True, description="At the end, when epoch files were saved and a sample or "
                             "validation prompt exists, write an epochs × strengths grid of the first prompt "
                             "(the X/Y plot of the kohya_ss + AUTOMATIC1111 LoRA walkthrough) and, with several prompts, an "
                             "epochs × prompts grid; a "
                             "pivotal run's cells load each epoch's `_emb` file with its LoRA.")

    _one_or_many = field_validator("validation_prompt", mode="before")(one_or_many)

    _parse_resolution = field_validator("validation_resolution", mode="before")(
        DataConfig._parse_resolution.__func__)  # type: ignore[attr-defined]


class RunConfig(BaseModel):
    """A whole run. `preset` names defaults applied before the file's own values."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(None, description="Name of a preset whose values this file overrides "
                               "(`lorakiln presets` lists them).")
    model: ModelConfig
    data: DataConfig
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    pivotal: PivotalConfig = Field(default_factory=PivotalConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    preservation: PreservationConfig = Field(default_factory=PreservationConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        check_run(self)  # options that contradict each other across sections (cross_checks.py)
        return self

    def resolved_paths(self, base: Path) -> RunConfig:
        """Return a copy whose relative paths are made absolute against `base` (the TOML's folder)."""
        def fix(p: str | None, hub_ok: bool = False) -> str | None:
            hub = hub_ok and p is not None and looks_like_hub_id(p) and not Path(p).exists()
            if p is None or p == "toy" or p.startswith(("tiny:", "random:")) or hub:
                return p
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        data = self.model_copy(deep=True)
        data.model.pretrained_model = fix(data.model.pretrained_model, hub_ok=True) or ""
        data.model.vae = fix(data.model.vae, hub_ok=True)
        data.model.config_dir = fix(data.model.config_dir)
        data.data.train_data_dir = fix(data.data.train_data_dir)
        data.prior.class_data_dir = fix(data.prior.class_data_dir)
        data.network.network_weights = fix(data.network.network_weights)
        data.train.resume = fix(data.train.resume)
        data.validation.sample_prompts = fix(data.validation.sample_prompts)
        data.validation.validation_images = fix(data.validation.validation_images)
        data.output.output_dir = fix(data.output.output_dir) or ""
        data.output.logging_dir = fix(data.output.logging_dir)
        return data


#: Every `[section]` of a run file and its model, in file order.
SECTIONS: dict[str, type[Section]] = {name: field.annotation for name, field in RunConfig.model_fields.items()
                                      if name != "preset"}  # type: ignore[misc]
