"""ZipLoRA's optimisation and its measurement: noisy latents, the paper's loss, effect kept.

**Loss** (Shah et al. 2023, method section). Per step, for each concept i ∈ {subject, style} with
prompt p_i: a latent x_0 from that concept's pool, fresh noise and a uniform timestep t (drawn
as the trainer draws them, `training.noise`), then

    L = ‖D_m(x_t, p_c) − D_c(x_t, p_c)‖² + ‖D_m(x_t, p_s) − D_s(x_t, p_s)‖² + λ Σ_layers |cos(m_c, m_s)|

where D_c / D_s is the base model with the subject / style LoRA, D_m the ZipLoRA merge, and the
squared norms are means over the U-Net output (mkshing/ziplora-pytorch's ``mse_loss``), so λ
means the same at every resolution. The paper describes the alignment term as the merger
vectors' cosine similarity (its loss, and mkshing/ziplora-pytorch's mean |m_c ⊙ m_s|, use their
product); we use |cos|, which does not also shrink the mergers' scale (the reconstruction terms
decide how strong each LoRA stays). Its gradient is 0 while
m_c ∥ m_s (at the start both are all-ones), so the reconstruction terms move first and the
alignment term then pushes the two apart. Each concept's term is back-propagated on its own
(the gradients add up the same), so only one U-Net graph is alive at a time.

**Latents.** The paper's D(x, p) uses images of each concept. A LoRA file carries no images, so
`generated` (default) samples each concept's x_0 with that LoRA and its own prompt (Euler,
``sample_steps``, CFG 5, latents straight from the sampler, no VAE round trip): those are the
inputs the LoRA's effect actually shows on, the closest we get to the paper's training images.
`random` uses unit-Gaussian latents (the U-Net's latent space is scaled to unit variance), which
costs nothing but lies off the image manifold at low t; it is for quick runs and tests.

**Text encoders.** D_m's conditioning is encoded with the merged text-encoder LoRA modules, and
those get merger vectors like U-Net modules: the loss is defined on the U-Net output, which
depends on the text encoder through the conditioning, so the same gradient learns them. The
paper merges U-Net LoRAs only; learning TE modules the same way is the direct extension, and
the alternatives lose information (an average halves both TE effects, one file cannot keep
"per-prompt" encoders).

**Effect kept** (measurement, not part of the paper): for LoRA i on held-out latents (other
seeds), fixed stratified timesteps and held-out noise, ``1 − Σ‖D_x − D_i‖² / Σ‖D − D_i‖²``:
1 = the merge reproduces LoRA i on its prompts exactly, 0 = no closer than the base model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lorakiln.models.conditioning import Conditioning, condition
from lorakiln.training.noise import sample_noise, sample_timesteps, step_generator

if TYPE_CHECKING:
    from lorakiln.lora_tools.ziplora.modules import ZipSet
    from lorakiln.models.bundle import ModelBundle

#: CFG of the sampler that makes `generated` latents: clearly guided, well below A1111's 7 so
#: few-step samples do not saturate.
SAMPLE_CFG = 5.0
#: Noise levels of the effect-kept evaluation, spread evenly over [0, T).
EVAL_TIMESTEPS = 4
#: Seed offsets keeping training and held-out draws apart.
_EVAL_SEED = 1_000_003
#: Rows per U-Net call in the evaluation (bounds memory on real models).
_EVAL_CHUNK = 8
#: The merge methods the evaluation compares (ZipSet modes) and their report names.
METHODS: dict[str, str] = {"merged": "ZipLoRA", "average": "plain average", "sum": "plain sum"}


@dataclass
class Concept:
    """One input LoRA's side of the loss: its mode, prompt and pools of clean latents."""

    name: str  # "subject" / "style": also the ZipSet mode of its target model
    prompt: str
    train: torch.Tensor  # [K, C, h, w]
    held_out: torch.Tensor  # [K_eval, C, h, w]
    cond_cache: dict[str, Conditioning] = field(default_factory=dict)


@dataclass
class Setup:
    """What every step needs: model, adapters, concepts, device and precision."""

    bundle: ModelBundle
    zips: ZipSet
    concepts: list[Concept]
    device: torch.device
    resolution: int
    autocast_dtype: torch.dtype | None
    seed: int


class _Geometry:
    """The per-sample sizes `conditioning.time_ids` reads from a batch: an uncropped square image."""

    def __init__(self, resolution: int) -> None:
        self.original_sizes = self.target_sizes = [(resolution, resolution)]
        self.crop_top_lefts = [(0, 0)]


def _vae_factor(bundle: ModelBundle) -> int:
    return int(2 ** (len(bundle.vae.config.block_out_channels) - 1))


def native_resolution(bundle: ModelBundle) -> int:
    """The image side the U-Net was built for (its ``sample_size`` in pixels): 512 for SD 1.5,
    1024 for SDXL, 64 for the toy and tiny models; the family default when the config lacks it."""
    size = getattr(bundle.unet.config, "sample_size", None)
    return int(size) * _vae_factor(bundle) if isinstance(size, int) else bundle.family.default_resolution


def latent_shape(bundle: ModelBundle, resolution: int) -> tuple[int, int, int]:
    """(channels, h, w) of the U-Net input at `resolution`; factors come from the configs."""
    vae_factor = _vae_factor(bundle)
    unet_factor = 2 ** (len(bundle.unet.config.block_out_channels) - 1)
    if resolution <= 0 or resolution % (vae_factor * unet_factor):
        raise ValueError(f"--resolution {resolution} must be a positive multiple of "
                         f"{vae_factor * unet_factor} for this model (VAE and U-Net downsampling)")
    side = resolution // vae_factor
    return int(bundle.unet.config.in_channels), side, side


def random_latents(shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    """Unit-Gaussian latents (the `random` choice, module docstring)."""
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))


def generated_latents(bundle: ModelBundle, zips: ZipSet, mode: str, prompt: str, seeds: list[int],
                      resolution: int, sample_steps: int) -> torch.Tensor:
    """x_0 latents sampled with one input LoRA (mode) and its prompt (the `generated` choice)."""
    from lorakiln.inference.pipeline import build_pipeline
    from lorakiln.inference.weighting import encode_prompt

    pipe = build_pipeline(bundle)
    with zips.using(mode), torch.no_grad():
        pos, pos_pooled = encode_prompt(pipe, bundle, prompt)
        neg, neg_pooled = encode_prompt(pipe, bundle, "")
        n = len(seeds)
        kwargs: dict[str, Any] = {"prompt_embeds": pos.expand(n, -1, -1),
                                  "negative_prompt_embeds": neg.expand(n, -1, -1)}
        if pos_pooled is not None:  # families with pooled text (SDXL) take it in the pipeline too
            kwargs |= {"pooled_prompt_embeds": pos_pooled.expand(n, -1),
                       "negative_pooled_prompt_embeds": neg_pooled.expand(n, -1)}  # type: ignore[union-attr]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(num_inference_steps=sample_steps, guidance_scale=SAMPLE_CFG, width=resolution,
                   height=resolution, generator=gens, output_type="latent", **kwargs)
    return out.images.float().cpu()


def _conditioning(setup: Setup, concept: Concept, mode: str, rows: int) -> Conditioning:
    """The U-Net conditioning of `concept`'s prompt under `mode`, for `rows` samples.

    Fixed modes are encoded once (frozen encoders give the same tensors every time); ``merged``
    is encoded on every call because its text-encoder mergers are being learned.
    """
    cond = concept.cond_cache.get(mode)
    if cond is None:
        # merged: grad as the caller has it (on in a step, off in the evaluation)
        grad = contextlib.nullcontext() if mode == "merged" else torch.no_grad()
        with setup.zips.using(mode), grad, _autocast(setup):
            cond = condition(setup.bundle, _Geometry(setup.resolution), [concept.prompt], 1, setup.device)
        if mode != "merged":
            concept.cond_cache[mode] = cond
    extra = None if cond.added_cond_kwargs is None else {
        k: v.expand(rows, *v.shape[1:]) for k, v in cond.added_cond_kwargs.items()}
    return Conditioning(cond.hidden.expand(rows, *cond.hidden.shape[1:]), extra)


def _autocast(setup: Setup) -> Any:
    if setup.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(setup.device.type, dtype=setup.autocast_dtype)


def denoise(setup: Setup, concept: Concept, mode: str, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The U-Net prediction under `mode` for `concept`'s prompt (fp32)."""
    cond = _conditioning(setup, concept, mode, noisy.shape[0])
    with setup.zips.using(mode), _autocast(setup):
        pred = setup.bundle.unet(noisy, t, cond.hidden, added_cond_kwargs=cond.added_cond_kwargs).sample
    return pred.float()


def _rows(pool: torch.Tensor, step: int, batch: int) -> torch.Tensor:
    """`batch` latents of the pool for `step`, cycling through it in order."""
    index = torch.arange(step * batch, (step + 1) * batch) % len(pool)
    return pool[index]


def train_step(setup: Setup, optimizer: torch.optim.Optimizer, step: int, lam: float,
               batch: int = 1) -> dict[str, float]:
    """One update of the merger vectors (`batch` latents per concept); returns its loss terms."""
    scheduler = setup.bundle.noise_scheduler
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, float] = {}
    for index, concept in enumerate(setup.concepts):
        gen = step_generator(setup.seed, step, stream=index)
        x0 = _rows(concept.train, step, batch).to(setup.device)
        noise = sample_noise(x0, gen)
        t = sample_timesteps(batch, scheduler.config.num_train_timesteps, gen, setup.device)
        noisy = scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            target = denoise(setup, concept, concept.name, noisy, t)
        loss = F.mse_loss(denoise(setup, concept, "merged", noisy, t), target)
        loss.backward()
        terms[f"{concept.name}_mse"] = float(loss.detach())
    align = setup.zips.alignment()
    if align.requires_grad and lam:
        (lam * align).backward()
    terms["alignment"] = float(align.detach())
    terms["loss"] = sum(v for k, v in terms.items() if k.endswith("_mse")) + lam * terms["alignment"]
    optimizer.step()
    return terms


def _held_out(setup: Setup, concept: Concept, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out noisy latents and timesteps: each held-out latent at `EVAL_TIMESTEPS` fixed levels."""
    scheduler = setup.bundle.noise_scheduler
    total = scheduler.config.num_train_timesteps
    levels = [int((j + 0.5) * total / EVAL_TIMESTEPS) for j in range(EVAL_TIMESTEPS)]
    x0 = concept.held_out.repeat_interleave(EVAL_TIMESTEPS, dim=0).to(setup.device)
    t = torch.tensor(levels * len(concept.held_out), device=setup.device)
    noise = sample_noise(x0, step_generator(setup.seed + _EVAL_SEED, 0, stream=index))
    return scheduler.add_noise(x0, noise, t), t


def effect_kept(setup: Setup, methods: tuple[str, ...] = tuple(METHODS)) -> dict[str, dict[str, float]]:
    """``{method: {concept: effect kept}}`` on held-out inputs (module docstring); NaN when a
    LoRA has no effect at all on its prompts (nothing to keep)."""
    out: dict[str, dict[str, float]] = {m: {} for m in methods}
    for index, concept in enumerate(setup.concepts):
        noisy, t = _held_out(setup, concept, index)
        err = dict.fromkeys((*methods, "base"), 0.0)
        with torch.no_grad():
            for lo in range(0, len(noisy), _EVAL_CHUNK):
                x, tt = noisy[lo:lo + _EVAL_CHUNK], t[lo:lo + _EVAL_CHUNK]
                ref = denoise(setup, concept, concept.name, x, tt)
                for mode in err:
                    err[mode] += float((denoise(setup, concept, mode, x, tt) - ref).pow(2).sum())
        for m in methods:
            out[m][concept.name] = 1.0 - err[m] / err["base"] if err["base"] > 0 else float("nan")
    return out


def optimise(setup: Setup, steps: int, lr: float, lam: float, batch: int = 1,
             on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Adam on the merger vectors for `steps` steps (the paper: ~100 steps at lr 1e-2; mkshing: batch 1)."""
    params = setup.zips.parameters()
    if not params or steps == 0:
        return []
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []
    for step in range(steps):
        terms = train_step(setup, optimizer, step, lam, batch)
        history.append(terms)
        if on_step is not None:
            on_step(step, terms)
    return history
