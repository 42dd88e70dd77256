"""The run's plan before any model: dataset scan and checks, and the step arithmetic.

`lorakiln train --dry-run`, `lorakiln dataset check` and the UI's live step count all print what
the trainer will do — how many images, repeats, batches and optimizer steps — and the trainer
prints the same lines before it loads the model (`prepare.prepare` calls `describe_plan` first).
One module computes them, so the numbers never disagree.

Nothing here imports torch (a test keeps it so): answering "how many steps?" must take a
fraction of a second, not the seconds a torch import costs. The data loader's counting side and
the optimizer/scheduler name registry (`config.optimizer_names`) are torch-free for the same
reason; what needs torch is imported inside the functions that build tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.config.schema import RunConfig

if TYPE_CHECKING:
    from lorakiln.data.dataset import Dataset
    from lorakiln.data.lint import LintOptions, LintResult
    from lorakiln.data.loader import TrainData

Log = Callable[[str], None] | None


@dataclass
class StepPlan:
    """How many steps the run takes and why (printed before training)."""

    batches_per_epoch: int
    steps_per_epoch: int
    num_epochs: int
    total_steps: int


def plan_steps(cfg: RunConfig, batches_per_epoch: int) -> StepPlan:
    """Total steps = batches per epoch ÷ accumulation × epochs, unless max_train_steps is set."""
    accum = cfg.train.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accum))
    if cfg.train.max_train_steps:
        total = cfg.train.max_train_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        epochs = cfg.train.max_train_epochs
        total = steps_per_epoch * epochs
    return StepPlan(batches_per_epoch, steps_per_epoch, epochs, total)


def scan_training_images(cfg: RunConfig) -> Dataset:
    """The instance dataset: kohya folders, an ImageFolder with metadata, or a hub dataset.
    Raises DatasetError listing every problem, before any model is loaded."""
    from lorakiln.data import load_hub_dataset, scan_dataset

    d = cfg.data
    if d.dataset_name:
        return load_hub_dataset(d.dataset_name, Path(cfg.output.output_dir) / ".cache" / "hub",
                                caption_column=d.caption_column or None, instance_prompt=d.instance_prompt,
                                repeats=d.repeats)
    return scan_dataset(d.train_data_dir or "", caption_extension=d.caption_extension,
                        caption_column=d.caption_column or None, image_column=d.image_column,
                        instance_prompt=d.instance_prompt, repeats=d.repeats)


def _scan_validation_images(cfg: RunConfig) -> Dataset:
    """`[validation] validation_images`, scanned with the training folder's caption options."""
    from lorakiln.data import scan_dataset

    d = cfg.data
    return scan_dataset(cfg.validation.validation_images or "", caption_extension=d.caption_extension,
                        caption_column=d.caption_column or None, image_column=d.image_column,
                        instance_prompt=d.instance_prompt)


def build_data(cfg: RunConfig, class_data: Dataset | None = None,
               dataset: Dataset | None = None, processes: int = 1) -> tuple[Dataset, TrainData]:
    """Scan and check the dataset and plan batches (class images join each batch when given).
    With several processes a batch is the step's global one, `train_batch_size × processes`
    samples of one bucket, which each process then slices (training/distributed.py)."""
    from lorakiln.data import BucketManager
    from lorakiln.data.loader import AugmentOptions, CaptionOptions, TrainData

    d = cfg.data
    if dataset is None:  # a fresh scan: held-out images leave the training set here, before batching
        from lorakiln.data.holdout import with_held_out

        v = cfg.validation
        dataset = with_held_out(scan_training_images(cfg), v.validation_split, cfg.train.seed,
                                _scan_validation_images(cfg) if v.validation_images else None)
    buckets = BucketManager(d.resolution, d.enable_bucket, d.min_bucket_reso, d.max_bucket_reso,
                            d.bucket_reso_steps, d.bucket_no_upscale)
    data = TrainData(
        dataset, buckets=buckets, batch_size=cfg.train.train_batch_size * processes, seed=cfg.train.seed,
        captions=CaptionOptions(d.shuffle_caption, d.keep_tokens, d.caption_dropout_rate,
                                d.caption_tag_dropout_rate, d.caption_dropout_every_n_epochs),
        augment=AugmentOptions(flip_aug=d.flip_aug, random_crop=d.random_crop),
        class_data=class_data,
    )
    return dataset, data


def describe_plan(cfg: RunConfig, log: Log = print, processes: int = 1) -> tuple[Dataset, TrainData, StepPlan]:
    """Every check that needs no model, then the printed step breakdown; used by `--dry-run` and
    by `prepare`, so a dry run fails exactly where the real run would."""
    from lorakiln.config.optimizer_names import validate_optimizer_name, validate_scheduler_name
    from lorakiln.training.preflight import preflight
    from lorakiln.training.preservation_plan import check_preservation

    validate_optimizer_name(cfg.train.optimizer_type)
    validate_scheduler_name(cfg.train.lr_scheduler)
    _check_render_settings(cfg)
    preflight(cfg, log=log)  # paths, weights headers, output_dir, folder names, batch size: one error
    dataset, data = build_data(cfg, processes=processes)
    check_preservation(cfg, dataset, log)  # a missing class word fails here, before the model loads
    plan = plan_steps(cfg, data.num_batches_per_epoch)
    lint = lint_training_data(cfg, dataset)
    if log:
        for finding in lint.findings:
            log(f"{finding.severity}: {finding.message}")
        for line in plan_lines(cfg, data, plan, processes):
            log(line)
    return dataset, data, plan


def plan_lines(cfg: RunConfig, data: TrainData, plan: StepPlan, processes: int = 1) -> list[str]:
    """The step arithmetic as printed before training (and by `lorakiln dataset check`)."""
    lines = [data.steps_breakdown().format(plan.num_epochs)]
    if processes > 1:
        accum = cfg.train.gradient_accumulation_steps
        lines.append(f"{processes} processes: global batch = train_batch_size {cfg.train.train_batch_size} × "
                     f"{processes} processes × {accum} accumulation = "
                     f"{cfg.train.train_batch_size * processes * accum} samples per optimizer step "
                     "(the batches above are global: each process takes its share)")
    if data.dataset.held_out:
        lines.append(f"validation loss: {len(data.dataset.held_out)} held-out image(s), not trained on")
    accum = cfg.train.gradient_accumulation_steps
    if accum > 1:
        lines.append(f"gradient accumulation {accum}: {plan.steps_per_epoch} optimizer steps per epoch")
    if cfg.train.max_train_steps:
        lines.append(f"max_train_steps = {plan.total_steps} overrides the epoch count ({plan.num_epochs} epochs)")
    lines.append(f"optimizer steps: {plan.total_steps}")
    return lines


def lint_options(cfg: RunConfig) -> LintOptions:
    """`dataset check` thresholds for this run: its resolution; no vocabulary check when pivotal
    tuning inserts new tokens for the trigger word (as the diffusers advanced SDXL recipe does)."""
    from lorakiln.data.lint import LintOptions

    return LintOptions(resolution=cfg.data.resolution, check_images=cfg.data.check_images,
                       check_tokens=not cfg.pivotal.train_text_encoder_ti)


def lint_training_data(cfg: RunConfig, dataset: Dataset) -> LintResult:
    """The `dataset check` findings the trainer prints as warnings before loading a model."""
    from lorakiln.data.lint import lint_dataset

    token = cfg.pivotal.token_abstraction if cfg.pivotal.train_text_encoder_ti else None
    return lint_dataset(dataset, lint_options(cfg), token=token)


def _check_render_settings(cfg: RunConfig) -> None:
    """Sample-prompt file and sampler name are checked before any model loads."""
    from lorakiln.inference.infotext import GenerationParams
    from lorakiln.inference.samplers import resolve_sampler
    from lorakiln.training.samples import read_sample_prompts

    v = cfg.validation
    if v.sample_prompts or v.validation_prompt:
        resolve_sampler(v.sample_sampler)
    if v.sample_prompts:
        read_sample_prompts(v.sample_prompts, GenerationParams())
