"""Validation loss and drift per saved file, and the recommended file and strength (issue 22.2)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_support import draw_dataset

from lorakiln.training.drift import TRAINED_PROMPTS_NOTE, DriftProbe, class_prompts, drift_prompt_plan
from lorakiln.training.loop import TrainingInterrupted, train
from lorakiln.training.plan import build_data
from lorakiln.training.prepare import prepare
from lorakiln.training.recommend import RULE, FileSignals, recommend
from lorakiln.training.val_loss import ValidationLoss

#: The training tests' configs turn the signals off (tests/training/conftest.py); these runs measure them.
SIGNALS = dict(validation__signals=True)


def test_drift_is_zero_for_a_zero_lora_and_grows_with_strength(run_config) -> None:
    ctx = prepare(run_config(validation__validation_split=0.25), log=None)
    ctx.network.eval()
    probe = DriftProbe(ctx)
    [cls, blank] = probe.prompts  # the class prompt (zwx → toy) of a training image, and ""
    assert cls.startswith("photo of toy, a toy, picture ") and blank == ""
    assert set(probe.measure(ctx).values()) == {0.0}  # kohya init: the up weights are zero
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in ctx.network.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    drift = probe.measure(ctx)
    ordered = [drift[s] for s in sorted(drift)]
    assert ordered[0] > 0 and all(a < b for a, b in zip(ordered, ordered[1:], strict=False)), drift
    assert probe.measure(ctx) == drift  # fixed latents, noise and timesteps
    assert {m.multiplier for _, m in ctx.network.loras()} == {1.0}  # strengths restored


def test_drift_leaves_out_the_prompts_output_preservation_trains(run_config) -> None:
    """DOP holds the class prompts, blank-prompt preservation the blank one at the base: scoring
    drift on them would read low, so they are left out — unless nothing else is left (then a note)."""
    ctx = prepare(run_config(preservation__diff_output_preservation=True), log=None)
    classes = class_prompts(ctx)
    assert classes and drift_prompt_plan(ctx) == ([""], None)  # DOP alone: the blank prompt is honest
    ctx.cfg.preservation.blank_prompt_preservation = True
    prompts, note = drift_prompt_plan(ctx)
    assert prompts == [*classes, ""] and note == TRAINED_PROMPTS_NOTE  # nothing else: used, with the note
    ctx.cfg.validation.drift_prompts = ["a red car", ""]
    assert drift_prompt_plan(ctx) == (["", "a red car"], None)  # the user's own prompts always count
    ctx.cfg.preservation.diff_output_preservation = ctx.cfg.preservation.blank_prompt_preservation = False
    assert drift_prompt_plan(ctx) == ([*classes, "", "a red car"], None)


def test_validation_loss_is_deterministic_and_held_out_images_are_not_trained_on(run_config, tmp_path) -> None:
    cfg = run_config(validation__validation_split=0.25)
    dataset, data = build_data(cfg)
    assert len(dataset.held_out) == 1 and len(data.items) == 3
    assert not set(dataset.held_out) & set(data.items)
    assert all(ref[0] < 3 for epoch in range(3) for batch in data.epoch_batches(epoch) for ref in batch)
    assert build_data(cfg)[0].held_out == dataset.held_out  # seeded: the same images every time

    draw_dataset(tmp_path / "val", count=2, folder="1_zwx toy")
    with_folder, _ = build_data(run_config(validation__validation_images=str(tmp_path / "val")))
    assert [p.path.parent.parent.name for p in with_folder.held_out] == ["val", "val"]

    ctx = prepare(cfg, log=None)
    ctx.network.eval()
    val = ValidationLoss(ctx.dataset.held_out)
    first = val.measure(ctx, 4, 0)
    assert first is not None and first > 0 and val.measure(ctx, 4, 0) == first
    assert val.measure(ctx, 4, 1) != first  # the seed chooses the noise


def test_recommendation_rule() -> None:
    rows = [FileSignals("a-1", 10, 0.30, {1.0: 0.01, 0.5: 0.001}), FileSignals("a-2", 20, 0.20, {1.0: 0.04, 0.5: 0.01}),
            FileSignals("a", 30, 0.10, {1.0: 0.20, 0.5: 0.05})]
    rec = recommend(rows, 0.05)
    assert (rec.file, rec.strength, rec.rule) == ("a-2", 1.0, RULE)  # lowest loss under the threshold at 1.0
    rec = recommend(rows, 0.005)
    assert (rec.file, rec.strength) == ("a-1", 0.5)  # only reachable at a lower strength
    rec = recommend([FileSignals("x", 1, None, {1.0: 0.01}), FileSignals("y", 2, None, {1.0: 0.01})], 0.05)
    assert rec.file == "y" and "no held-out" in rec.reason  # without a validation loss: the latest
    rec = recommend(rows, 1e-9)
    assert rec.file == "a-1" and rec.strength == 0.5 and "even at strength 0.5" in rec.reason
    assert "turn on output preservation" in rec.reason
    assert "output preservation is on already" in recommend(rows, 1e-9, preserving=True).reason
    assert recommend([], 0.05) is None


def test_recommended_file_is_a_saved_file_and_the_rule_is_printed(run_config, capsys) -> None:
    cfg = run_config(train__max_train_epochs=3, output__save_every_n_epochs=1, validation__validation_split=0.25,
                     validation__drift_prompts="a red car", **SIGNALS)
    events: list[tuple[str, dict]] = []
    train(cfg, callbacks=[lambda e, i: events.append((e, i))], progress=False)
    saved = [str(i["path"]) for e, i in events if e in ("save", "done")]
    signals = [i for e, i in events if e == "signals"]
    [rec] = [i for e, i in events if e == "recommended"]
    assert len(saved) == 3 and [s["file"] for s in signals] == saved
    assert all(s["val_loss"] is not None and s["drift"] is not None for s in signals)
    assert rec["file"] in saved and rec["rule"] == RULE and 0.5 <= rec["strength"] <= 1.0
    out = capsys.readouterr().out
    assert f"rule: {RULE}" in out and "recommended: " in out and "last-000002.safetensors" in out


def _interrupt_at(step: int):
    def callback(event: str, info: dict) -> None:
        if event == "step" and info["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def _rows(out: Path) -> dict[str, dict]:
    data = json.loads((out / "last-signals.json").read_text(encoding="utf-8"))
    return {r["file"]: r for r in data["rows"]}


def test_resume_is_exact_with_signals_on(run_config, tmp_path) -> None:
    common = dict(train__max_train_epochs=2, output__save_every_n_epochs=1, output__save_state=True,
                  network__network_dropout=0.1, validation__validation_split=0.25)
    full = train(run_config(output__output_dir=str(tmp_path / "full"), **SIGNALS, **common), progress=False)
    off = train(run_config(output__output_dir=str(tmp_path / "off"), validation__signals=False, **common),
                progress=False)
    cfg = run_config(output__output_dir=str(tmp_path / "cut"), **SIGNALS, **common)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, callbacks=[_interrupt_at(11)], progress=False)  # mid-epoch 2 (8 steps per epoch)
    resumed = train(run_config(output__output_dir=str(tmp_path / "cut"), train__resume=str(stop.value.state),
                               **SIGNALS, **common), progress=False)
    a, b, c = (load_file(str(r.lora_path)) for r in (full, resumed, off))
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")  # the epoch-1 row survived the stop
    assert set(_rows(tmp_path / "full")) == {"last-000001.safetensors", "last.safetensors"}
    assert not (tmp_path / "off" / "last-signals.json").exists()


def test_class_prompt_replaces_the_trigger(run_config) -> None:
    ctx = prepare(run_config(), log=None)
    assert class_prompts(ctx) == ["photo of toy, a toy, picture 0"]
    ctx.cfg.pivotal.token_abstraction = "photo"  # a pivotal run's abstraction is a trigger too
    ctx.pivotal = object()  # type: ignore[assignment]
    assert class_prompts(ctx) == ["toy of toy, a toy, picture 0"]
