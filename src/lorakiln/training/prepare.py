"""Build a `TrainContext` from a config: cheap checks first, then the model.

1. Dataset scan and checks (names, images, captions) and the step arithmetic — no model yet.
2. Optimizer and scheduler names are validated.
3. Base model loaded, frozen, moved to the device; LoRA injected with a seeded init.
4. Optimizer, LR schedule, grad scaler; latents cached; a resume state restored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lorakiln.config.schema import RunConfig
from lorakiln.errors import LorakilnError
from lorakiln.training.context import (
    StepPlan,
    TrainContext,
    autocast_dtype_for,
    pick_device,
    plan_steps,
    resolve_lrs,
    wants_text_encoder,
)

Log = Callable[[str], None] | None


def scan_training_images(cfg: RunConfig) -> Any:
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


def build_data(cfg: RunConfig, class_data: Any = None, dataset: Any = None) -> tuple[Any, Any]:
    """Scan and check the dataset and plan batches (class images join each batch when given)."""
    from lorakiln.data import BucketManager
    from lorakiln.data.loader import AugmentOptions, CaptionOptions, TrainData

    d = cfg.data
    dataset = dataset or scan_training_images(cfg)
    buckets = BucketManager(d.resolution, d.enable_bucket, d.min_bucket_reso, d.max_bucket_reso,
                            d.bucket_reso_steps, d.bucket_no_upscale)
    data = TrainData(
        dataset, buckets=buckets, batch_size=cfg.train.train_batch_size, seed=cfg.train.seed,
        captions=CaptionOptions(d.shuffle_caption, d.keep_tokens, d.caption_dropout_rate,
                                d.caption_tag_dropout_rate, d.caption_dropout_every_n_epochs),
        augment=AugmentOptions(flip_aug=d.flip_aug, random_crop=d.random_crop),
        class_data=class_data,
    )
    return dataset, data


def describe_plan(cfg: RunConfig, log: Log = print) -> tuple[Any, Any, StepPlan]:
    """Dataset checks and the printed step breakdown; used by `--dry-run` and by `prepare`."""
    from lorakiln.config.preflight import preflight
    from lorakiln.training.optimizers import validate_optimizer_name
    from lorakiln.training.schedulers import validate_scheduler_name

    validate_optimizer_name(cfg.train.optimizer_type)
    validate_scheduler_name(cfg.train.lr_scheduler)
    _check_render_settings(cfg)
    preflight(cfg, log=log)  # paths, weights headers, output_dir, folder names, batch size: one error
    dataset, data = build_data(cfg)
    plan = plan_steps(cfg, data.num_batches_per_epoch)
    lint = lint_training_data(cfg, dataset)
    if log:
        for finding in lint.findings:
            log(f"{finding.severity}: {finding.message}")
        for line in plan_lines(cfg, data, plan):
            log(line)
    return dataset, data, plan


def plan_lines(cfg: RunConfig, data: Any, plan: StepPlan) -> list[str]:
    """The step arithmetic as printed before training (and by `lorakiln dataset check`)."""
    lines = [data.steps_breakdown().format(plan.num_epochs)]
    accum = cfg.train.gradient_accumulation_steps
    if accum > 1:
        lines.append(f"gradient accumulation {accum}: {plan.steps_per_epoch} optimizer steps per epoch")
    if cfg.train.max_train_steps:
        lines.append(f"max_train_steps = {plan.total_steps} overrides the epoch count ({plan.num_epochs} epochs)")
    lines.append(f"optimizer steps: {plan.total_steps}")
    return lines


def lint_options(cfg: RunConfig) -> Any:
    """`dataset check` thresholds for this run: its resolution; no vocabulary check when pivotal
    tuning inserts new tokens for the trigger word (seed 003)."""
    from lorakiln.data.lint import LintOptions

    return LintOptions(resolution=cfg.data.resolution, check_images=cfg.data.check_images,
                       check_tokens=not cfg.pivotal.train_text_encoder_ti)


def lint_training_data(cfg: RunConfig, dataset: Any) -> Any:
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


def _freeze(bundle: Any, device: torch.device, weight_dtype: torch.dtype) -> None:
    for module in (bundle.unet, *bundle.text_encoders):
        module.requires_grad_(False)
        # Only cast when needed: diffusers warns on any `.to(dtype)` of a loaded model.
        module.to(device) if weight_dtype == torch.float32 else module.to(device, dtype=weight_dtype)
        module.eval()
    bundle.vae.requires_grad_(False)
    bundle.vae.to(device)  # kept fp32: the SD VAE overflows in fp16
    bundle.vae.eval()


def _class_images(cfg: RunConfig, bundle: Any, log: Log) -> Any:
    """Generate missing class images with the base model (once; later runs reuse them) and scan
    them (DreamBooth prior preservation; kohya regularisation folders work as they are)."""
    from lorakiln.data import count_class_images, missing_class_images, scan_class_images

    p, d = cfg.prior, cfg.data
    folder = p.class_data_dir or ""
    missing = missing_class_images(folder, p.num_class_images, prompt=p.class_prompt, base_model=bundle.name)
    if missing:
        if not p.class_prompt:
            from lorakiln.errors import ConfigError

            raise ConfigError(f"{folder} holds fewer than prior.num_class_images = {p.num_class_images} "
                              "images and prior.class_prompt is empty: set class_prompt so the missing "
                              "class images can be generated, or add images to the folder")
        _generate_class_images(cfg, bundle, missing, count_class_images(folder), log)
    return scan_class_images(folder, p.class_prompt, caption_extension=d.caption_extension,
                             num_class_images=p.num_class_images)


def _generate_class_images(cfg: RunConfig, bundle: Any, count: int, start: int, log: Log) -> None:
    from tqdm.auto import tqdm

    from lorakiln.data import write_class_images
    from lorakiln.inference.pipeline import build_pipeline

    p = cfg.prior
    width, height = cfg.data.resolution
    pipe = build_pipeline(bundle)
    done = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad(), tqdm(total=count, desc="class images",
                                                                   disable=log is None) as bar:
        while done < count:
            n = min(p.sample_batch_size, count - done)
            gen = torch.Generator().manual_seed(cfg.train.seed + start + done)
            images = pipe([p.class_prompt] * n, num_inference_steps=p.class_inference_steps, width=width,
                          height=height, generator=gen).images
            write_class_images(p.class_data_dir or "", images, p.class_prompt or "", start + done,
                               base_model=bundle.name)
            done += n
            bar.update(n)


#: Named config fields (the diffusers scripts' flags) → optimizer constructor arguments.
_NAMED_OPTIMIZER_ARGS = {
    "adam_weight_decay": "weight_decay", "adam_epsilon": "eps",
    "prodigy_safeguard_warmup": "safeguard_warmup", "prodigy_use_bias_correction": "use_bias_correction",
    "prodigy_decouple": "decouple", "prodigy_beta3": "beta3", "prodigy_d_coef": "d_coef",
}  # fmt: skip
#: Adaptive optimizers that need one initial lr for every group (dadaptation/prodigyopt assert it).
_ONE_LR_OPTIMIZERS = {"Prodigy", "DAdaptLion", "DAdaptSGD", "DAdaptAdan", "DAdaptAdaGrad"}


def optimizer_args(cfg: RunConfig) -> dict[str, Any]:
    """kohya `optimizer_args` plus the named fields (`adam_beta1`, `prodigy_safeguard_warmup`, …);
    a value given both ways is an error naming both spellings."""
    from lorakiln.errors import ConfigError
    from lorakiln.training.optim_args import parse_optim_args

    t = cfg.train
    args = parse_optim_args(t.optimizer_args)
    named: dict[str, Any] = {arg: getattr(t, f) for f, arg in _NAMED_OPTIMIZER_ARGS.items()
                             if getattr(t, f) is not None}
    if t.adam_beta1 is not None or t.adam_beta2 is not None:
        named["betas"] = (0.9 if t.adam_beta1 is None else t.adam_beta1,
                          0.999 if t.adam_beta2 is None else t.adam_beta2)
    for key, value in named.items():
        if key in args and args[key] != value:
            raise ConfigError(f"optimizer argument '{key}' is set twice: train.optimizer_args has "
                              f"{args[key]!r}, a named train.* field has {value!r}; keep one")
    return args | named


def _same_lr_for_adaptive(cfg: RunConfig, groups: list[dict[str, Any]], log: Log) -> None:
    """Prodigy and most D-Adaptation optimizers estimate one step size for all groups: give every
    group `learning_rate`, as the diffusers advanced script does (seed 003: "we start with an
    identical initial learning rate for all trained parameters")."""
    from lorakiln.training.optimizers import validate_optimizer_name

    if validate_optimizer_name(cfg.train.optimizer_type) not in _ONE_LR_OPTIMIZERS:
        return
    lrs = {g["lr"] for g in groups if g.get("lr")}
    if len(lrs) > 1 and log:
        log(f"note: {cfg.train.optimizer_type} uses one initial learning rate for all parts; using "
            f"learning_rate = {cfg.train.learning_rate} for every group (was {sorted(lrs)})")
    for g in groups:
        if g.get("lr"):
            g["lr"] = cfg.train.learning_rate


def _add_pivotal_tokens(cfg: RunConfig, bundle: Any) -> Any:
    """New tokens `<s0><s1>…` in every tokenizer/encoder (seed 003, "Pivotal Tuning")."""
    p = cfg.pivotal
    if not p.train_text_encoder_ti:
        return None
    from lorakiln.networks.pivotal import add_new_tokens

    return add_new_tokens(bundle.tokenizers, bundle.text_encoders, p.token_abstraction,
                          p.num_new_tokens_per_abstraction, init=p.initializer_concept or "random",
                          seed=cfg.train.seed, std_pull=p.ti_std_pull, fix_pooling=p.ti_fix_pooling)


def _pivotal_group(cfg: RunConfig, pivotal: Any) -> dict[str, Any]:
    """The new embeddings' optimizer group: its own lr and weight decay. It stays in the optimizer
    after the pivot (frozen parameters get no gradient), so the optimizer layout never changes."""
    t, p = cfg.train, cfg.pivotal
    lr = p.text_encoder_ti_lr or t.text_encoder_lr or t.learning_rate
    group: dict[str, Any] = {"name": "text_encoder_ti", "params": list(pivotal.parameters()), "lr": lr}
    if p.adam_weight_decay_text_encoder is not None:
        group["weight_decay"] = p.adam_weight_decay_text_encoder
    return group


def _warn_long_captions(dataset: Any, bundle: Any, log: Log, pivotal: Any = None) -> None:
    from lorakiln.training.conditioning import overlong_captions

    def text(caption: str) -> str:
        return pivotal.replace_abstractions(caption) if pivotal is not None else caption

    long = overlong_captions(bundle.tokenizers[0], {str(i.path): text(i.caption) for i in dataset.items})
    if long and log:
        shown = ", ".join(f"{Path(p).name} ({n} tokens)" for p, n in long[:3])
        log(f"warning: {len(long)} caption(s) exceed the 75-token window and will be cut: {shown}"
            + (" …" if len(long) > 3 else "") + "; shorten them or move key words to the front")


def _encode_fn(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """VAE encode → scaled latents. The distribution's mode (mean) is used, so a cached latent is
    a pure function of the image (the SD VAE's std is tiny; kohya samples instead)."""
    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return (dist.mode() * vae.config.scaling_factor).float().cpu()
    return encode


def _enable_memory_options(cfg: RunConfig, bundle: Any, train_te: bool) -> None:
    if not cfg.train.sdpa:
        from diffusers.models.attention_processor import AttnProcessor

        bundle.unet.set_attn_processor(AttnProcessor())
    if cfg.train.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        bundle.unet.train()  # diffusers only checkpoints in training mode
        if train_te:
            for te in bundle.text_encoders:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                te.train()


def prepare(cfg: RunConfig, log: Log = print) -> TrainContext:
    """Everything before the first step (see the module docstring for the order)."""
    from lorakiln.data.latent_cache import LatentCache, vae_fingerprint
    from lorakiln.networks.network import create_lora_network
    from lorakiln.training.base_model import load_configured_model
    from lorakiln.training.optimizers import build_optimizer, lr_warning
    from lorakiln.training.outputs import write_resolved_config
    from lorakiln.training.schedulers import build_scheduler, resolve_warmup_steps

    dataset, data, plan = describe_plan(cfg, log)
    device = pick_device()
    autocast_dtype = autocast_dtype_for(cfg.train.mixed_precision, device)
    # Frozen weights in half precision only on GPU; CPU keeps fp32 weights under autocast. Fully
    # fine-tuned weights stay fp32 (mixed precision keeps an fp32 master copy).
    half_ok = autocast_dtype and device.type == "cuda" and cfg.train.mode == "lora"
    weight_dtype = autocast_dtype if half_ok else torch.float32

    m = cfg.model
    bundle = load_configured_model(m.pretrained_model, vae=m.vae, config_dir=m.config_dir,
                                   allow_pickle=m.allow_pickle)
    _freeze(bundle, device, weight_dtype)
    if cfg.prior.with_prior_preservation:  # before any LoRA exists: class images show the base model
        dataset, data = build_data(cfg, _class_images(cfg, bundle, log), dataset)
    pivotal = _add_pivotal_tokens(cfg, bundle)
    _warn_long_captions(dataset, bundle, log, pivotal)
    train_te = wants_text_encoder(cfg)
    torch.manual_seed(cfg.train.seed)  # LoRA init (kaiming down, zero up) is seeded
    if cfg.train.mode == "full":
        from lorakiln.networks.full import FullNetwork

        network: Any = FullNetwork(bundle.family, bundle.unet, bundle.text_encoders, train_te)
    else:
        net = cfg.network
        network = create_lora_network(bundle.unet, bundle.text_encoders, bundle.family,
                                      dim=net.network_dim, alpha=net.network_alpha,
                                      dropout=net.network_dropout, train_text_encoder=train_te,
                                      algo=net.network_module, conv_dim=net.conv_dim,
                                      conv_alpha=net.conv_alpha, use_tucker=net.use_tucker,
                                      lokr_factor=net.lokr_factor,
                                      lokr_decompose_both=net.lokr_decompose_both, dora_wd=net.dora_wd)
    if cfg.network.network_weights:
        from lorakiln.networks.export import load_network_weights

        load_network_weights(network, cfg.network.network_weights)
    network.to(device)
    _enable_memory_options(cfg, bundle, train_te or pivotal is not None)

    lrs = resolve_lrs(cfg, train_te)
    groups = network.param_groups(unet_lr=lrs[0], text_encoder_lr=lrs[1], default_lr=cfg.train.learning_rate)
    if pivotal is not None:
        groups.append(_pivotal_group(cfg, pivotal))
    _same_lr_for_adaptive(cfg, groups, log)
    optimizer = build_optimizer(cfg.train.optimizer_type, groups, lr=cfg.train.learning_rate,
                                args=optimizer_args(cfg))
    warmup = resolve_warmup_steps(cfg.train.lr_warmup_steps, plan.total_steps)
    if log and (hint := lr_warning(cfg.train.optimizer_type, [lr for lr in lrs if lr is not None],
                                   cfg.train.optimizer_args)):
        log(f"warning: {hint}")
    schedule = build_scheduler(cfg.train.lr_scheduler, optimizer, num_training_steps=plan.total_steps,
                               num_warmup_steps=warmup, num_cycles=cfg.train.lr_scheduler_num_cycles,
                               power=cfg.train.lr_scheduler_power)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.mixed_precision == "fp16")

    output_dir = Path(cfg.output.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = output_dir / ".cache" / "latents" if cfg.data.cache_latents_to_disk else None
    encode = _encode_fn(bundle.vae)
    # Without cache_latents every step encodes its images (needed for random_crop; less memory).
    cache = (LatentCache(vae_fingerprint(bundle.vae) + ":mode-scaled", cache_dir)
             if cfg.data.cache_latents else None)
    optimizer_desc = f"{type(optimizer).__module__}.{type(optimizer).__name__}" + (
        f"({','.join(cfg.train.optimizer_args)})" if cfg.train.optimizer_args else "")
    ctx = TrainContext(cfg=cfg, plan=plan, dataset=dataset, data=data, bundle=bundle, network=network,
                       optimizer=optimizer, schedule=schedule, scaler=scaler, cache=cache, device=device,
                       autocast_dtype=autocast_dtype, train_text_encoder=train_te, output_dir=output_dir,
                       encode_fn=encode, lrs=lrs, optimizer_desc=optimizer_desc, warmup_steps=warmup,
                       pivotal=pivotal)
    if cfg.train.ema_decay:
        from lorakiln.training.ema import EMA

        ctx.ema = EMA([p for g in optimizer.param_groups for p in g["params"]], cfg.train.ema_decay)
    if cache is not None:
        if log:
            log("caching latents")
        data.cache_all(encode, cache, progress=log is not None)
    if cfg.train.resume:
        _resume(ctx, log)
    write_resolved_config(ctx)
    return ctx


def _resume(ctx: TrainContext, log: Log) -> None:
    """Restore adapter, optimizer, schedule, scaler, RNGs and loop position from a state folder."""
    from lorakiln.training.state import load_state, restore_rng

    state = load_state(ctx.cfg.train.resume or "")
    pivotal_state = {k: v for k, v in state.network_state.items() if k.startswith("pivotal.")}
    ema_state = {k: v for k, v in state.network_state.items() if k.startswith("ema.")}
    ctx.network.load_kohya_state_dict({k: v for k, v in state.network_state.items()
                                       if k not in pivotal_state and k not in ema_state})
    if ctx.pivotal is not None:
        ctx.pivotal.load_state_dict(pivotal_state)
    if ctx.ema is not None:
        if not ema_state:
            raise LorakilnError(f"{state.folder} was saved without train.ema_decay; resume with the same setting")
        ctx.ema.load_state_dict(ema_state)
    ctx.optimizer.load_state_dict(state.optimizer_state)
    ctx.schedule.load_state_dict(state.schedule_state)
    if state.scaler_state:
        ctx.scaler.load_state_dict(state.scaler_state)
    restore_rng(state)
    ctx.position = state.position
    changed = _changed_keys(state.config, ctx.cfg.model_dump(mode="json"))
    if log:
        log(f"resumed from {state.folder} at step {state.position.global_step} "
            f"(epoch {state.position.epoch + 1}, batch {state.position.batch_in_epoch})")
        if changed:
            log("warning: these settings differ from the saved run, so the result will not match an "
                "uninterrupted run exactly: " + ", ".join(changed))


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    ignore = {"train.resume", "train.max_train_epochs", "train.max_train_steps", "output"}
    out = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if dotted in ignore or prefix.rstrip(".") in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, dotted + ".")
        elif a != b:
            out.append(dotted)
    return out
