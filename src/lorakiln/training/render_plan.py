"""The renders a run will do between and after its steps, planned before the first step, and the
time-left estimate that counts them.

A progress bar that counts only optimizer steps lies on small models: on a slow machine the
previews at epoch ends and the final grids can take most of the wall time, and the bar then sits
at "100 %" for minutes. The loop therefore knows, from the config alone, how many images of which
size and sampling-step count it will draw after which step (the same rules `validation.due_jobs`
and `validation.final_grids` apply), measures how long steps and renders take, and shows the time
left for both.

Render work is counted in pixel-steps (images × width × height × sampling steps): the U-Net's cost
grows with both, so a rate measured on one render carries over to another size or step count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorakiln.config.schema import RunConfig
from lorakiln.inference.infotext import GenerationParams
from lorakiln.training.plan import StepPlan

#: How many strengths the final epochs × strengths grid draws (`inference.grid.STRENGTHS_AXIS`).
GRID_STRENGTHS = 6


@dataclass(frozen=True)
class RenderJob:
    """Images drawn after `after_step` (the total for the end-of-run renders)."""

    after_step: int
    images: int
    work: float  # pixel-steps


def job_size(prompts: Sequence[GenerationParams]) -> tuple[int, float]:
    """(images, pixel-steps) of rendering `prompts` once each."""
    images = work = 0.0
    for p in prompts:
        n = p.batch_count * p.batch_size
        images += n
        work += n * p.width * p.height * p.steps
    return int(images), work


def every(n: int | None, value: int) -> bool:
    """Whether a render set to run every `n` steps/epochs is due at `value` (unset or 0: never);
    the rule `validation.due_jobs` applies as the run goes, and the plan below ahead of it."""
    return bool(n) and value % (n or 1) == 0


def render_schedule(cfg: RunConfig, plan: StepPlan, validation: Sequence[GenerationParams],
                    samples: Sequence[GenerationParams]) -> list[RenderJob]:
    """Every render of a run from its first step: validation and samples after the steps and epoch
    ends their settings name, both at the end, then the final grids (the first prompt at every
    saved file × 6 strengths, the others at every saved file once)."""
    v = cfg.validation
    val_size, sample_size = job_size(validation), job_size(samples)
    jobs: list[RenderJob] = []

    def add(step: int, size: tuple[int, float]) -> None:
        if size[0]:
            jobs.append(RenderJob(step, *size))

    for step in range(1, plan.total_steps + 1):
        if v.validation_prompt and every(v.validation_steps, step):
            add(step, val_size)
        if v.sample_prompts and every(v.sample_every_n_steps, step):
            add(step, sample_size)
        epoch, rest = divmod(step, plan.steps_per_epoch)
        if rest == 0 and epoch < plan.num_epochs and step < plan.total_steps:
            if v.validation_prompt and every(v.validation_epochs, epoch):
                add(step, val_size)
            if v.sample_prompts and every(v.sample_every_n_epochs, epoch):
                add(step, sample_size)
    end = plan.total_steps
    if v.validation_prompt:
        add(end, val_size)
    if v.sample_prompts:
        add(end, sample_size)
    grid_prompts = list(samples if v.sample_prompts else validation) if v.final_grid else []
    saved = sum(1 for e in range(1, plan.num_epochs) if every(cfg.output.save_every_n_epochs, e))
    if grid_prompts and saved and cfg.train.mode != "full":
        files = saved + 1
        first = grid_prompts[0]
        cells = [(first, files * GRID_STRENGTHS)] + [(p, files) for p in grid_prompts[1:]]
        add(end, (sum(n for _, n in cells), sum(n * p.width * p.height * p.steps for p, n in cells)))
    return jobs


class EtaClock:
    """Time left = steps left × seconds per step + render work left × seconds per pixel-step.

    Both rates are measured as the run goes (mean over what was done in this process). Before the
    first render the render rate is estimated from the step time: a training step is about three
    U-Net passes (forward and backward) over `train_batch × width × height` pixels, a sampling step
    with CFG two passes over one image's pixels; the first measured render replaces the estimate.
    """

    def __init__(self, jobs: Sequence[RenderJob], start_step: int, train_pixels: int) -> None:
        self.jobs = [j for j in jobs if j.after_step > start_step]
        self.train_pixels = max(1, train_pixels)
        self.step_seconds = 0.0
        self.steps = 0
        self.render_seconds = 0.0
        self.render_work = 0.0

    def step_done(self, seconds: float) -> None:
        self.step_seconds += seconds
        self.steps += 1

    def render_done(self, work: float, seconds: float) -> None:
        self.render_seconds += seconds
        self.render_work += work

    def seconds_per_work(self) -> float | None:
        if self.render_work > 0:
            return self.render_seconds / self.render_work
        if self.steps:
            return (self.step_seconds / self.steps) * 2.0 / (3.0 * self.train_pixels)
        return None

    def remaining(self, step: int, total_steps: int) -> tuple[float | None, int]:
        """(seconds left, images left to render) once `step` steps are done and before the
        renders due after it; seconds None until a step was timed."""
        left = [j for j in self.jobs if j.after_step >= step]
        images = sum(j.images for j in left)
        rate = self.seconds_per_work()
        if not self.steps or rate is None:
            return None, images
        steps_left = max(0, total_steps - step) * self.step_seconds / self.steps
        return steps_left + rate * sum(j.work for j in left), images


def format_seconds(seconds: float) -> str:
    """"1:05:09", "4:07", "0:12" — tqdm's own ETA style."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
