"""LoRA file metadata: kohya ``ss_*`` keys and Stability ``modelspec.*`` keys.

The trainer fills a typed `TrainingInfo`; `build_metadata` turns it into the ``dict[str, str]``
safetensors wants, so no caller ever assembles strings. Conventions (sd-scripts
``train_network.py`` metadata and ``library/sai_model_spec.py``; A1111 ``network.py`` ``NetworkOnDisk``):

* every value is a ``str``; structured values are ``json.dumps``-ed (A1111's
  ``read_metadata_from_safetensors`` JSON-decodes values starting with ``{``);
* scalars are ``str()``-ed the way kohya's argparse values print (``"4.0"`` for a float alpha,
  ``"None"`` for an unset clip skip, ``"(512, 512)"`` for the resolution), so tools that parse
  kohya metadata see familiar values;
* ``ss_output_name`` is A1111's alias, ``ss_base_model_version``/``ss_v2`` its SD1/SD2/SDXL
  detection; ``sshs_*`` hashes are added by the exporter after serialisation.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from lorakiln.models.family import ModelFamily

#: Metadata keys whose values are JSON documents.
JSON_KEYS: frozenset[str] = frozenset(
    {"ss_network_args", "ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info", "ss_datasets"}
)
#: kohya `SS_METADATA_MINIMUM_KEYS`: what survives `--no_metadata`.
MINIMUM_KEYS: tuple[str, ...] = (
    "ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
    "ss_network_args",
)  # fmt: skip
MODELSPEC_VERSION = "1.0.1"

Scalar = str | int | float | bool | None


class NetworkSpec(Protocol):
    """What metadata needs from a network (`LoRANetwork` and later LyCORIS networks)."""

    family: ModelFamily
    dim: int
    alpha: float
    dropout: float
    network_module: str
    network_args: dict[str, str]


@dataclass
class TrainingInfo:
    """Facts about a training run that go into the file; the trainer fills it as it goes."""

    output_name: str
    #: Unix time the run started / this file was saved (kohya writes unix time).
    training_started_at: float = field(default_factory=time.time)
    training_finished_at: float | None = None
    session_id: int = field(default_factory=lambda: uuid.uuid4().int % 2**31)
    # progress
    epoch: int = 0
    num_epochs: int = 1
    steps: int = 0
    max_train_steps: int = 0
    # data
    num_train_images: int = 0
    num_reg_images: int = 0
    num_batches_per_epoch: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    resolution: tuple[int, int] = (512, 512)
    #: ``{dataset dir: {tag: count}}`` (A1111's tag list in the LoRA card).
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``{dir: {"n_repeats": n, "img_count": m}}``.
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``{"buckets": {"0": {"resolution": [w, h], "count": n}}, "mean_img_ar_error": …}``.
    bucket_info: dict[str, Any] | None = None
    enable_bucket: bool = False
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    flip_aug: bool = False
    # optimisation
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer: str = "AdamW"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    prior_loss_weight: float = 1.0
    seed: int | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    #: CLIP skip (2 = penultimate layer); None when unset.
    clip_skip: int | None = None
    # base model
    sd_model_name: str = ""
    #: sha256 of the base checkpoint file, when known (`ss_new_sd_model_hash`).
    sd_model_hash: str | None = None
    vae_name: str | None = None
    #: "epsilon" or "v_prediction" (the scheduler's value).
    prediction_type: str = "epsilon"
    # modelspec extras
    title: str | None = None
    author: str | None = None
    description: str | None = None
    license: str | None = None
    tags: tuple[str, ...] = ()
    trigger_phrase: str | None = None
    training_comment: str | None = None
    #: Anything else: ``ss_<key>`` = value (dicts/lists JSON-encoded, the rest ``str()``).
    extra: dict[str, Any] = field(default_factory=dict)


def _s(value: Scalar) -> str:
    """kohya stringification: ``str(value)`` (so None → "None", True → "True")."""
    return str(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def build_metadata(info: TrainingInfo, network: NetworkSpec, *, minimal: bool = False) -> dict[str, str]:
    """Return the ``ss_*`` + ``modelspec.*`` metadata of a LoRA file (all values ``str``).

    ``minimal=True`` keeps only kohya's minimum keys (its ``--no_metadata``), which still lets
    A1111 detect the version and read dim/alpha.
    """
    family = network.family
    w, h = info.resolution
    finished = info.training_finished_at if info.training_finished_at is not None else time.time()
    md: dict[str, str] = {
        "ss_v2": family.ss_v2,
        "ss_base_model_version": family.base_model_version,
        "ss_network_module": network.network_module,
        "ss_network_dim": _s(network.dim),
        "ss_network_alpha": _s(float(network.alpha)),
        "ss_network_args": json.dumps(network.network_args),
    }
    if minimal:
        return md
    md |= {
        "ss_session_id": _s(info.session_id),
        "ss_output_name": info.output_name,
        "ss_training_started_at": _s(info.training_started_at),
        "ss_training_finished_at": _s(finished),
        "ss_epoch": _s(info.epoch),
        "ss_num_epochs": _s(info.num_epochs),
        "ss_steps": _s(info.steps),
        "ss_max_train_steps": _s(info.max_train_steps),
        "ss_num_train_images": _s(info.num_train_images),
        "ss_num_reg_images": _s(info.num_reg_images),
        "ss_num_batches_per_epoch": _s(info.num_batches_per_epoch),
        "ss_batch_size_per_device": _s(info.batch_size),
        "ss_total_batch_size": _s(info.batch_size * info.gradient_accumulation_steps),
        "ss_gradient_accumulation_steps": _s(info.gradient_accumulation_steps),
        "ss_resolution": _s((w, h)),
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_dataset_dirs": json.dumps(info.dataset_dirs),
        "ss_bucket_info": json.dumps(info.bucket_info),
        "ss_enable_bucket": _s(info.enable_bucket),
        "ss_caption_dropout_rate": _s(info.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": _s(info.caption_tag_dropout_rate),
        "ss_shuffle_caption": _s(info.shuffle_caption),
        "ss_keep_tokens": _s(info.keep_tokens),
        "ss_flip_aug": _s(info.flip_aug),
        "ss_learning_rate": _s(info.learning_rate),
        "ss_unet_lr": _s(info.unet_lr),
        "ss_text_encoder_lr": _s(info.text_encoder_lr),
        "ss_optimizer": info.optimizer,
        "ss_lr_scheduler": info.lr_scheduler,
        "ss_lr_warmup_steps": _s(info.lr_warmup_steps),
        "ss_max_grad_norm": _s(info.max_grad_norm),
        "ss_noise_offset": _s(info.noise_offset),
        "ss_min_snr_gamma": _s(info.min_snr_gamma),
        "ss_prior_loss_weight": _s(info.prior_loss_weight),
        "ss_seed": _s(info.seed),
        "ss_mixed_precision": info.mixed_precision,
        "ss_gradient_checkpointing": _s(info.gradient_checkpointing),
        "ss_clip_skip": _s(info.clip_skip),
        "ss_sd_model_name": info.sd_model_name,
        # kohya's own key for --network_dropout ("None" when unset); ours drops the branch input.
        "ss_network_dropout": _s(network.dropout or None),
    }
    if info.sd_model_hash:
        md["ss_new_sd_model_hash"] = info.sd_model_hash
    if info.vae_name:
        md["ss_vae_name"] = info.vae_name
    if info.training_comment:
        md["ss_training_comment"] = info.training_comment
    for key, value in info.extra.items():
        name = key if key.startswith("ss_") else f"ss_{key}"
        md[name] = json.dumps(value) if isinstance(value, dict | list | tuple) else _s(value)
    md |= build_modelspec(info, family, finished)
    return md


def build_modelspec(info: TrainingInfo, family: ModelFamily, finished_at: float) -> dict[str, str]:
    """``modelspec.*`` keys as kohya's ``sai_model_spec.py`` writes them for a LoRA."""
    w, h = info.resolution
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": family.modelspec_lora_architecture,
        "modelspec.implementation": family.modelspec_implementation,
        "modelspec.title": info.title or info.output_name,
        "modelspec.date": _iso(finished_at),
        "modelspec.resolution": f"{w}x{h}",
        # ModelSpec spells v-prediction "v" (sai_model_spec.py).
        "modelspec.prediction_type": "v" if info.prediction_type.startswith("v") else "epsilon",
    }
    if info.clip_skip is not None:
        spec["modelspec.encoder_layer"] = _s(info.clip_skip)
    optional = {
        "modelspec.author": info.author,
        "modelspec.description": info.description,
        "modelspec.license": info.license,
        "modelspec.trigger_phrase": info.trigger_phrase,
        "modelspec.tags": ", ".join(info.tags) if info.tags else None,
    }
    spec |= {k: v for k, v in optional.items() if v}
    return spec
