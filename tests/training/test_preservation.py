"""Output preservation (ai-toolkit's differential output preservation and blank prompt
preservation) on the tiny models: it holds the class prompt near the base, resumes exactly, works
with SDXL, pivotal tuning and prior preservation, and fails on a missing class word before any
model loads."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorakiln.errors import ConfigError
from lorakiln.models.conditioning import encode_text
from lorakiln.training import prepare as prepare_module
from lorakiln.training.loop import TrainingInterrupted, run_loop, train
from lorakiln.training.prepare import prepare
from lorakiln.training.preservation import network_off
from lorakiln.training.preservation_plan import ClassWords, cost_line
from lorakiln.training.signals import StopFlag

DOP = dict(preservation__diff_output_preservation=True)
BOTH = dict(preservation__diff_output_preservation=True, preservation__blank_prompt_preservation=True)


def test_class_prompt_replaces_the_trigger() -> None:
    words = ClassWords(("zwx",), "toy")
    assert words.class_prompt("photo of zwx, a toy") == "photo of toy, a toy"
    assert words.class_prompt("zwx toy on a table") == "toy on a table"  # kohya's "<token> <class>"
    assert words.class_prompt("zwxy and azwx") is None  # whole words only
    assert words.class_prompt("") is None


def _class_prompt_drift(ctx, prompts: list[str]) -> float:
    """Mean-squared difference of the trained network's prediction from the base model's on
    fixed noisy latents, for `prompts`."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((len(prompts), 4, 8, 8), generator=gen).to(ctx.device)
    timesteps = torch.tensor([100, 400, 700, 900][: len(prompts)], device=ctx.device)
    unet = ctx.bundle.unet
    with torch.no_grad():
        with network_off(ctx.network):
            hidden, _ = encode_text(ctx.bundle, prompts)
            base = unet(latents, timesteps, hidden).sample
        hidden, _ = encode_text(ctx.bundle, prompts)
        trained = unet(latents, timesteps, hidden).sample
    return float(((trained - base) ** 2).mean())


def _trained_context(run_config, tmp_path: Path, name: str, **options):
    cfg = run_config(output__output_dir=str(tmp_path / name), train__unet_lr=1e-2, train__text_encoder_lr=2e-3,
                     **options)
    ctx = prepare(cfg, log=None)
    run_loop(ctx, StopFlag(), [], progress=False)
    return ctx


def test_dop_keeps_the_class_prompt_near_the_base(run_config, tmp_path: Path) -> None:
    class_prompts = [f"photo of toy, a toy, picture {i}" for i in range(4)]
    trigger_prompts = [f"photo of zwx, a toy, picture {i}" for i in range(4)]
    plain = _trained_context(run_config, tmp_path, "plain")
    kept = _trained_context(run_config, tmp_path, "dop", preservation__preservation_weight=4.0, **DOP)
    drift_plain, drift_dop = _class_prompt_drift(plain, class_prompts), _class_prompt_drift(kept, class_prompts)
    learned_plain = _class_prompt_drift(plain, trigger_prompts)
    learned_dop = _class_prompt_drift(kept, trigger_prompts)
    print(f"class-prompt drift: without DOP {drift_plain:.3e}, with DOP {drift_dop:.3e}; "
          f"trigger-prompt change: without {learned_plain:.3e}, with {learned_dop:.3e}")
    assert drift_dop < 0.5 * drift_plain


#: Other things the LoRA should leave alone (preservation.preservation_prompts).
OTHERS = ["a red ball on a table", "a blue car in the street", "a green tree"]


def test_preservation_prompts_keep_their_prediction_near_the_base(run_config, tmp_path: Path) -> None:
    plain = _trained_context(run_config, tmp_path, "plain")
    kept = _trained_context(run_config, tmp_path, "prompts", preservation__preservation_prompts=OTHERS,
                            preservation__preservation_prompts_weight=4.0)
    drift_plain, drift_kept = _class_prompt_drift(plain, OTHERS), _class_prompt_drift(kept, OTHERS)
    print(f"preservation-prompt drift: without {drift_plain:.3e}, with {drift_kept:.3e}")
    assert drift_kept < 0.5 * drift_plain
    # each image of each step met one prompt in turn, and their base conditioning was cached
    assert {caption for caption, _ in kept.preservation.base_cache.entries} == set(OTHERS)


def test_preservation_prompts_come_in_turn_and_never_hold_the_trigger(run_config) -> None:
    from types import SimpleNamespace

    from lorakiln.training.preservation import OutputPreservation

    pres = OutputPreservation({}, class_prompts=False, blank=False, class_weight=1.0, blank_weight=1.0,
                              cache_class=False, prompts=OTHERS, prompts_weight=2.0)
    batch = SimpleNamespace(num_instance=2, paths=[Path("a"), Path("b")], captions=["", ""])
    assert pres.rows(batch, 0) == ([0, 1], OTHERS[:2], [1.0, 1.0])
    assert pres.rows(batch, 1)[1] == [OTHERS[2], OTHERS[0]]  # the next step goes on where it stopped
    with pytest.raises(ConfigError, match="holds the trigger 'zwx'"):
        prepare(run_config(preservation__preservation_prompts=["a zwx on a table"]), log=None)
    cfg = run_config(preservation__preservation_prompts="a red ball")  # one string is a list of one
    assert cfg.preservation.preservation_prompts == ["a red ball"] and cfg.preservation.enabled
    assert "1 preservation prompts in turn" in cost_line(cfg)


#: The resume runs' options besides the preservation ones.
RESUMED = dict(train__max_train_epochs=2, output__save_state=True, data__shuffle_caption=True,
               data__keep_tokens=1, network__network_dropout=0.1)


@pytest.fixture(scope="module")
def without_preservation(tmp_path_factory, config_maker) -> dict[str, torch.Tensor]:
    """The LoRA of the resume runs' options without preservation, trained once for both variants."""
    result = train(config_maker(tmp_path_factory.mktemp("plain"), **RESUMED), progress=False)
    return load_file(str(result.lora_path))


PROMPTS = dict(preservation__preservation_prompts=OTHERS)


# DOP and blank-prompt preservation together (each one's own state is in the run's either way),
# and the user's preservation prompts
@pytest.mark.parametrize("options", [BOTH, PROMPTS], ids=["dop+blank", "prompts"])
def test_preservation_resume_is_exact(run_config, tmp_path: Path, options: dict, without_preservation) -> None:
    common = dict(**RESUMED, **options)
    full = train(run_config(output__output_dir=str(tmp_path / "full"), **common), progress=False)

    def stop_at_13(event: str, info: dict) -> None:
        if event == "step" and info["step"] == 13:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        train(run_config(output__output_dir=str(tmp_path / "cut"), **common), callbacks=[stop_at_13],
              progress=False)
    resumed = train(run_config(output__output_dir=str(tmp_path / "cut"), train__resume=str(stop.value.state),
                               **common), progress=False)
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], without_preservation[k]) for k in a)  # preservation did change the training


def test_sdxl_with_pivotal_tuning_trains_with_both(run_config) -> None:
    """SDXL's pooled text embeds and time ids, and pivotal tokens (the class prompt holds none)."""
    cfg = run_config(model__pretrained_model="tiny:sdxl", train__max_train_steps=3,
                     pivotal__train_text_encoder_ti=True, pivotal__token_abstraction="zwx", **BOTH)
    result = train(cfg, progress=False)
    assert result.steps == 3 and result.last_loss is not None and torch.isfinite(torch.tensor(result.last_loss))


def test_unet_only_cached_text_and_cost_line(run_config, capsys) -> None:
    """Frozen text encoders: the class prompts' base conditioning is cached and reused."""
    cfg = run_config(network__network_train_unet_only=True, train__max_train_steps=4, **BOTH)
    ctx = prepare(cfg)
    assert cost_line(cfg) in capsys.readouterr().out
    run_loop(ctx, StopFlag(), [], progress=False)
    cached = {caption for caption, _ in ctx.preservation.base_cache.entries}
    assert "" in cached and any(c.startswith("photo of toy") for c in cached)


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not load before the config error")


def test_imagefolder_without_class_word_fails_before_the_model(run_config, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    rows = []
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "prompt": f"photo of zwx number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.setattr(prepare_module, "_load_frozen_model", _no_model)
    cfg = run_config(data__train_data_dir=str(folder), **DOP)
    with pytest.raises(ConfigError, match="preservation_class"):
        train(cfg, progress=False)
    # with a class word but no trigger anywhere (no folder token, no pivotal, no trigger_phrase)
    cfg = run_config(data__train_data_dir=str(folder), preservation__preservation_class="toy", **DOP)
    with pytest.raises(ConfigError, match="preservation_trigger"):
        train(cfg, progress=False)


def test_kohya_folder_without_class_and_full_mode_fail_early(run_config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "_load_frozen_model", _no_model)
    cfg = run_config(**DOP)
    os.rename(Path(cfg.data.train_data_dir) / "5_zwx toy", Path(cfg.data.train_data_dir) / "5_zwx")
    with pytest.raises(ConfigError, match="'5_zwx' has no class word"):
        train(cfg, progress=False)
    with pytest.raises(ConfigError, match="full"):
        train(run_config(train__mode="full", preservation__blank_prompt_preservation=True), progress=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_with_prior_preservation_and_mixed_precision(run_config, tmp_path: Path, precision: str) -> None:
    """DOP + blank-prompt preservation beside DreamBooth's prior preservation (class-image rows
    carry no trigger, so they get no class prompt) under autocast, with the per-file signals on
    (the training tests' configs turn them off): finite loss, finite file."""
    cfg = run_config(prior__with_prior_preservation=True, prior__class_prompt="a photo of a toy",
                     prior__num_class_images=2, prior__class_inference_steps=2, prior__sample_batch_size=2,
                     prior__class_data_dir=str(tmp_path / "class"), train__max_train_steps=2,
                     train__mixed_precision=precision, validation__signals=True, **BOTH)
    result = train(cfg, progress=False)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.last_loss))
    weights = load_file(str(result.lora_path))
    assert weights and all(torch.isfinite(w.float()).all() for w in weights.values())
