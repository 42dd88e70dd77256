"""The run context: device and precision choices, and the objects of one run that the loop reads
(`TrainContext`). `prepare.py` fills it; the step plan is `plan.py`'s (torch-free), the learning
rates `optimizer_setup.py`'s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakiln.config.schema import RunConfig
from lorakiln.errors import ConfigError
from lorakiln.models.conditioning import TextCache
from lorakiln.training.distributed import World
from lorakiln.training.plan import StepPlan
from lorakiln.training.state import LoopPosition

if TYPE_CHECKING:
    from lorakiln.data.dataset import Dataset
    from lorakiln.data.latent_cache import LatentCache
    from lorakiln.data.loader import TrainData
    from lorakiln.models.bundle import ModelBundle
    from lorakiln.networks.full import FullNetwork
    from lorakiln.networks.network import LoRANetwork
    from lorakiln.networks.pivotal import PivotalEmbeddings
    from lorakiln.training.ema import EMA
    from lorakiln.training.file_signals import FileSignalsRecorder
    from lorakiln.training.preservation import OutputPreservation


@dataclass
class TrainContext:
    """All objects of one run; the loop reads this and nothing global."""

    cfg: RunConfig
    plan: StepPlan
    dataset: Dataset
    data: TrainData
    bundle: ModelBundle
    network: LoRANetwork | FullNetwork
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    cache: LatentCache | None
    device: torch.device
    autocast_dtype: torch.dtype | None
    train_text_encoder: bool
    output_dir: Path
    position: LoopPosition = field(default_factory=LoopPosition)
    session_id: int = field(default_factory=lambda: uuid.uuid4().int % 2**31)
    started_at: float = field(default_factory=time.time)
    last_saved: Path | None = None
    encode_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    lrs: tuple[float, float | None] = (0.0, None)
    optimizer_desc: str = ""
    warmup_steps: int = 0
    #: Pivotal-tuning embeddings (new tokens), when `pivotal.train_text_encoder_ti`.
    pivotal: PivotalEmbeddings | None = None
    #: Moving average of the trained weights (`train.ema_decay`); files are saved from it.
    ema: EMA | None = None
    #: Validation loss and drift of each saved file (`[validation] signals`); set by the loop.
    signals: FileSignalsRecorder | None = None
    #: Output preservation's loss (`[preservation]`, preservation.py), None when it is off.
    preservation: OutputPreservation | None = None
    #: This process's place in a multi-process run (distributed.py); one process by default.
    world: World = field(default_factory=World)
    #: The U-Net is sharded over the processes (FSDP, sharding.py): every process takes part in
    #: each use of it (steps, renders, signals, saves), rank 0 alone writes.
    sharded: bool = False
    #: `lorakiln train --verbose`: where each micro-batch's bucket and images are printed
    #: (every process, prefixed with its rank), None otherwise.
    trace: Callable[[str], None] | None = None

    @property
    def full(self) -> bool:
        """Full fine-tuning (`train.mode = "full"`): outputs are models, not LoRA files."""
        return self.cfg.train.mode == "full"

    def prompt(self, text: str) -> str:
        """A caption or prompt with each token abstraction replaced by its new tokens."""
        return self.pivotal.replace_abstractions(text) if self.pivotal is not None else text

    #: Text-encoder outputs per caption (`data.cache_text_encoder_outputs`), used while frozen.
    text_cache: TextCache | None = None

    def active_text_cache(self) -> TextCache | None:
        """The text cache when it is valid now: encoders frozen (no LoRA or embeddings training)
        and captions deterministic (no shuffle or dropout), else None."""
        d = self.cfg.data
        random_captions = (d.shuffle_caption or d.caption_dropout_rate or d.caption_tag_dropout_rate
                           or d.caption_dropout_every_n_epochs)
        if not d.cache_text_encoder_outputs or random_captions or self.text_encoder_needs_grad:
            return None
        if self.text_cache is None:
            self.text_cache = TextCache()
        return self.text_cache

    @property
    def text_encoder_needs_grad(self) -> bool:
        """The text-encoder forward needs gradients for its LoRA or for training embeddings."""
        return self.train_text_encoder or (self.pivotal is not None and self.pivotal.is_training)


def wants_text_encoder(cfg: RunConfig) -> bool:
    """The text-encoder LoRA is trained unless U-Net-only or its learning rate is 0."""
    return not cfg.network.network_train_unet_only and cfg.train.text_encoder_lr != 0


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype_for(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    if mixed_precision == "no":
        return None
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.mixed_precision = 'bf16' but this GPU has no bf16 support; use 'fp16'")
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16
