"""Renders while training: diffusers' validation prompts and kohya's sample prompts, through the
same `inference.generate` as `lorakiln generate` (A1111 samplers, emphasis, infotext), saved
under `<output_dir>/validation/` or `<output_dir>/sample/` and logged to TensorBoard; at the end
an epochs × strengths grid (the X/Y plot of the kohya_ss + AUTOMATIC1111 LoRA walkthrough) and an epochs × prompts grid when epoch files
exist, rendered from the saved files as a user would load them.

Rendering must not change training: the network and U-Net go to eval mode (no LoRA dropout,
no checkpointing) and every RNG is forked, so a run with renders ends with the same weights as
one without, and resume stays exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lorakiln.atomic import atomic_path
from lorakiln.inference.infotext import GenerationParams, png_info
from lorakiln.training import sharding
from lorakiln.training.render_plan import every

if TYPE_CHECKING:
    from PIL.Image import Image

    from lorakiln.inference.generate import GeneratedImage
    from lorakiln.training.context import TrainContext


def due_jobs(ctx: TrainContext, *, epoch_end: bool, final: bool) -> list[tuple[str, list[GenerationParams]]]:
    """(folder, prompts) to render now: validation every `validation_epochs` / `validation_steps`,
    samples every `sample_every_n_epochs` / `sample_every_n_steps`, both at the end."""
    v, pos = ctx.cfg.validation, ctx.position
    jobs = []
    if v.validation_prompt and (final or (epoch_end and every(v.validation_epochs, pos.epoch))
                                or (not epoch_end and every(v.validation_steps, pos.global_step))):
        jobs.append(("validation", validation_params(ctx)))
    if v.sample_prompts and (final or (epoch_end and every(v.sample_every_n_epochs, pos.epoch))
                             or (not epoch_end and every(v.sample_every_n_steps, pos.global_step))):
        jobs.append(("sample", sample_params(ctx)))
    return jobs


def _defaults(ctx: TrainContext) -> GenerationParams:
    v = ctx.cfg.validation
    width, height = v.validation_resolution or ctx.cfg.data.resolution
    return GenerationParams(steps=v.validation_inference_steps, sampler=v.sample_sampler, schedule_type=None,
                            cfg_scale=v.validation_guidance_scale, seed=v.validation_seed, width=width,
                            height=height, clip_skip=ctx.cfg.model.clip_skip)


def validation_params(ctx: TrainContext) -> list[GenerationParams]:
    v = ctx.cfg.validation
    return [replace(_defaults(ctx), prompt=p, negative_prompt=v.validation_negative_prompt,
                    batch_count=v.num_validation_images) for p in v.validation_prompt]


def sample_params(ctx: TrainContext) -> list[GenerationParams]:
    from lorakiln.training.samples import read_sample_prompts

    return read_sample_prompts(ctx.cfg.validation.sample_prompts or "", _defaults(ctx))


#: Pixels per sampling batch when renders are batched: 16 images at 64 px, 4 at 512, 1 at 1024
#: (SDXL), so batching saves per-call overhead on small previews and never costs memory on big ones.
BATCH_PIXELS = 1024 * 1024
MAX_BATCH = 16


def render_groups(prompts: list[GenerationParams]) -> list[list[int]]:
    """Indices of `prompts` that can share one sampling call: every setting but the prompt and the
    seed alike (sampler, steps, CFG, size, negative prompt…), in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        key = repr(replace(p, prompt="", seed=0, batch_size=1, batch_count=1))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def render(ctx: TrainContext, prompts: list[GenerationParams]) -> list[list[GeneratedImage]]:
    """Images per prompt with the LoRA being trained (hooked, strength 1) and the new tokens.

    Prompts with the same settings are drawn together (`inference.generate.generate_many`: one
    pipeline, batches of up to `MAX_BATCH` images within `BATCH_PIXELS`); each image is the one the
    prompt and seed give alone, as `lorakiln generate` draws it (A1111's seeds: seed, seed+1, …)."""
    import random

    from lorakiln.inference.generate import generate_many

    out: list[list[GeneratedImage]] = [[] for _ in prompts]
    with evaluating(ctx):
        for group in render_groups(prompts):
            first = prompts[group[0]]
            items, owners = [], []
            for i in group:
                p = prompts[i]
                seed = p.seed if p.seed >= 0 else random.randrange(2**32)
                items += [(ctx.prompt(p.prompt), seed + k) for k in range(p.batch_count * p.batch_size)]
                owners += [i] * (p.batch_count * p.batch_size)
            batch = max(1, min(MAX_BATCH, BATCH_PIXELS // (first.width * first.height), len(items)))
            params = replace(first, negative_prompt=ctx.prompt(first.negative_prompt), batch_size=batch)
            for owner, image in zip(owners, generate_many(ctx.bundle, params, items), strict=True):
                out[owner].append(image)
    return out


@contextlib.contextmanager
def evaluating(ctx: TrainContext, devices: list[int] | None = None) -> Iterator[None]:
    """Measure or render mid-run without touching the run: every module in eval mode (dropout
    off), the EMA weights applied when EMA is on (they are what a saved file holds), no grad, and
    the RNG states forked (`devices`: CUDA devices to fork too), so exact resume is unaffected.
    Modes are restored on the way out, also after a stop signal."""
    modules = [ctx.network, ctx.bundle.unet, *ctx.bundle.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    if ctx.sharded:  # whole weights left from a forward would hide the EMA swap (sharding.reshard)
        sharding.reshard(ctx.bundle.unet)
    averaged = ctx.ema.applied() if ctx.ema is not None else contextlib.nullcontext()
    try:
        with torch.random.fork_rng(devices=devices or []), torch.no_grad(), averaged:
            yield
    finally:
        if ctx.sharded:  # the next training step gathers the live weights again
            sharding.reshard(ctx.bundle.unet)
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def save(ctx: TrainContext, folder_name: str, rendered: list[list[GeneratedImage]]) -> list[Path]:
    """`<folder>/e0001-s000010-p0-0.png` …, atomically, with A1111 infotext."""
    folder = ctx.output_dir / folder_name
    pos = ctx.position
    paths = []
    for p_idx, images in enumerate(rendered):
        for i, item in enumerate(images):
            path = folder / f"e{pos.epoch:04d}-s{pos.global_step:06d}-p{p_idx}-{i}.png"
            with atomic_path(path) as tmp:
                item.image.save(tmp, format="PNG", pnginfo=png_info(item.params))
            paths.append(path)
    return paths


def as_batch(images: list[Image]) -> np.ndarray:
    """[N, H, W, 3] uint8 for TensorBoard's `add_images(..., dataformats="NHWC")`."""
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


def _file_prompt(ctx: TrainContext, prompt: str, final: str) -> tuple[str, Path | None]:
    """(prompt, embeddings folder) as a user of the saved files writes it: a pivotal run with one
    abstraction prompts `zwx_emb` (its saved embedding, as in A1111), so the epochs axis can swap
    each epoch's embedding with its LoRA; otherwise the trained tokens stand in (`<s0><s1>`)."""
    emb = ctx.output_dir / f"{final}_emb.safetensors"
    if ctx.pivotal is not None and len(ctx.pivotal.abstractions) == 1 and emb.is_file():
        return ctx.pivotal.replace_abstractions(prompt, emb.stem), ctx.output_dir
    return ctx.prompt(prompt), None


def final_grids(ctx: TrainContext, progress: bool = False) -> tuple[Path | None, Path | None]:
    """The kohya_ss walkthrough's X/Y plots after training, from the saved files: epochs × strengths 1.0 … 0.5
    for the first sample (or validation) prompt, and epochs × prompts at 1.0 when there are
    several (the concept in other colours or settings, the base's subjects without it). The
    training hooks are removed first; each file is hooked in turn."""
    from lorakiln.inference.grid import draw_grid, epoch_files, epochs_strengths, xyz_grid

    v = ctx.cfg.validation
    if ctx.full:  # a grid of whole models would load each one; compare them with `lorakiln grid --model`
        return None, None
    prompts = (sample_params(ctx) if v.sample_prompts else validation_params(ctx)) if v.final_grid else []
    if not prompts or not ctx.position.saved_epochs:
        return None, None
    final, _ = epoch_files(ctx.output_dir)
    ctx.network.remove()
    if ctx.pivotal is not None:
        ctx.pivotal.freeze()  # the tokens' rows go into the tables and their hooks come off
    rows, x_names, paths = [], [], []
    for i, p in enumerate(prompts):
        text, embeddings = _file_prompt(ctx, p.prompt, final)
        params, x, y = epochs_strengths(ctx.output_dir, replace(p, batch_count=1, prompt=text,
                                                                negative_prompt=ctx.prompt(p.negative_prompt)))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            grids = xyz_grid(ctx.bundle, params, x, y if i == 0 else None, lora_dir=ctx.output_dir,
                             embeddings_dir=embeddings, progress=progress)
        [(image, cells)] = grids
        if i == 0:
            paths.append(_save_png(image, ctx.output_dir / f"{final}_epochs_x_strengths.png"))
        rows.append([c.image for c in (cells if i else cells[:len(x.values)])])
        x_names = x.names
    if len(prompts) > 1:
        sheet = draw_grid(rows, x_names, [p.prompt for p in prompts])
        paths.append(_save_png(sheet, ctx.output_dir / f"{final}_epochs_x_prompts.png"))
    return paths[0], (paths[1] if len(paths) > 1 else None)


def _save_png(image: Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
