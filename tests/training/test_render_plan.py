"""The render plan and the time left it gives the progress bar (training/render_plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakiln.config.load import build_config
from lorakiln.inference.infotext import GenerationParams
from lorakiln.training.plan import plan_steps
from lorakiln.training.render_plan import EtaClock, RenderJob, format_seconds, job_size, render_schedule


def _cfg(tmp_path: Path, **validation: object) -> object:
    raw = {"model": {"pretrained_model": "tiny:sd1"}, "data": {"train_data_dir": str(tmp_path)},
           "train": {"max_train_epochs": 6}, "output": {"output_dir": str(tmp_path / "out"),
                                                       "save_every_n_epochs": 2},
           "validation": validation}
    return build_config(raw, base_dir=tmp_path)


def _prompt(text: str, size: int = 64, steps: int = 30, count: int = 1) -> GenerationParams:
    return GenerationParams(prompt=text, width=size, height=size, steps=steps, batch_count=count)


def test_job_size_counts_images_and_pixel_steps() -> None:
    assert job_size([_prompt("a", 64, 30, 2), _prompt("b", 128, 10)]) == (3, 2 * 64 * 64 * 30 + 128 * 128 * 10)


def test_schedule_follows_the_epoch_settings_and_adds_the_final_grids(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, sample_prompts="p.txt", sample_every_n_epochs=2)
    plan = plan_steps(cfg, batches_per_epoch=25)  # 25 steps per epoch, 6 epochs
    samples = [_prompt("a zwx"), _prompt("a green zwx"), _prompt("a red circle")]
    jobs = render_schedule(cfg, plan, [], samples)
    one = job_size(samples)
    # epoch ends 2 and 4 (not 6: the end renders once), the end, then the grids: saved files
    # zwx-000002, zwx-000004 and the final one; the first prompt at 6 strengths, the others once.
    assert jobs[:3] == [RenderJob(50, *one), RenderJob(100, *one), RenderJob(150, *one)]
    grid = jobs[3]
    assert grid.after_step == 150 and grid.images == 3 * 6 + 2 * 3
    assert len(jobs) == 4


def test_schedule_by_steps_and_validation_without_grids(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, validation_prompt=["a zwx"], validation_epochs=100, validation_steps=40,
               num_validation_images=2, final_grid=False)
    plan = plan_steps(cfg, batches_per_epoch=25)
    jobs = render_schedule(cfg, plan, [_prompt("a zwx", count=2)], [])
    assert [j.after_step for j in jobs] == [40, 80, 120, 150]
    assert all(j.images == 2 for j in jobs)


def test_no_renders_no_jobs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert render_schedule(cfg, plan_steps(cfg, batches_per_epoch=25), [], []) == []


def test_time_left_counts_the_renders_still_to_come() -> None:
    work = 64 * 64 * 30.0
    clock = EtaClock([RenderJob(5, 1, work), RenderJob(10, 2, 2 * work)], start_step=0, train_pixels=64 * 64)
    assert clock.remaining(1, 10) == (None, 3)  # nothing timed yet
    clock.step_done(1.0)
    left, images = clock.remaining(1, 10)
    # 9 steps at 1 s, and the renders at the estimate from the step time (2 passes per sampling
    # step against 3 per training step over the same pixels): 3 images × 30 steps × 2/3 s.
    assert images == 3 and left == pytest.approx(9 + 3 * 30 * 2 / 3)
    clock.render_done(work, 3.0)  # the measured rate replaces the estimate: 3 s per image
    for _ in range(4):
        clock.step_done(1.0)
    left, images = clock.remaining(5, 10)  # the step-5 render is done once step 6 reports
    assert images == 3 and left == pytest.approx(5 + 3 * 3.0)
    left, images = clock.remaining(6, 10)
    assert images == 2 and left == pytest.approx(4 + 2 * 3.0)
    assert clock.remaining(10, 10) == (pytest.approx(6.0), 2)  # the end renders are still ahead


def test_a_resumed_run_plans_only_what_is_left() -> None:
    clock = EtaClock([RenderJob(5, 1, 1.0), RenderJob(10, 2, 2.0)], start_step=5, train_pixels=1)
    assert clock.remaining(6, 10)[1] == 2


def test_format_seconds() -> None:
    assert format_seconds(12) == "0:12"
    assert format_seconds(247) == "4:07"
    assert format_seconds(3909) == "1:05:09"
