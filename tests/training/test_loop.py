"""End-to-end training on the tiny SD1 model: outputs, learning, resume, faults."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakiln.errors import TrainingError
from lorakiln.models.configured import ensure_tiny_model
from lorakiln.training import loop as loop_module
from lorakiln.training.loop import TrainingInterrupted, train


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_outputs_names_metadata_and_config(run_config) -> None:
    cfg = run_config(train__max_train_epochs=3, output__save_every_n_epochs=1, output__save_state=True,
                     output__save_diffusers=True)
    result = train(cfg, progress=False)
    out = Path(cfg.output.output_dir)
    # 4 images x 5 repeats / batch 2 = 10 steps per epoch
    assert result.steps == 30 and result.epochs == 3
    assert result.lora_path == out / "last.safetensors"
    for name in ("last-000001.safetensors", "last-000002.safetensors", "last_config.toml",
                 "pytorch_lora_weights.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / "last-000003.safetensors").exists()  # the last epoch is `last`
    assert (out / "last-state" / "state.json").is_file()
    with safe_open(str(result.lora_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == "last" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_steps"] == "30" and meta["ss_epoch"] == "3" and meta["ss_seed"] == "1"
    assert json.loads(meta["ss_tag_frequency"])["5_zwx toy"]["photo of zwx"] == 4
    assert json.loads(meta["ss_dataset_dirs"])["5_zwx toy"] == {"n_repeats": 5, "img_count": 4}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert list((out / "logs").iterdir()), "TensorBoard logs missing"
    # fp16 save precision
    assert all(t.dtype == torch.float16 for t in _tensors(result.lora_path).values())


def _pipeline_loss(pipe, latents: torch.Tensor, captions: list[str]) -> float:
    """Denoising loss of `pipe` on fixed noise/timesteps (same draws for every call)."""
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0]
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=gen)
            ts = torch.full((latents.shape[0],), t)
            noisy = pipe.scheduler.add_noise(latents, noise, ts)
            pred = pipe.unet(noisy, ts, hidden).sample
            total += torch.nn.functional.mse_loss(pred, noise).item()
    return total / 5


def test_training_lowers_loss_and_loads_in_diffusers(run_config, library_warnings) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from lorakiln.data.loader import TrainData  # noqa: F401 (import check)
    from lorakiln.training.prepare import prepare

    cfg = run_config(train__max_train_epochs=8, train__unet_lr=2e-3, train__text_encoder_lr=1e-3,
                     network__network_dim=8, network__network_alpha=8)
    ctx = prepare(cfg, log=None)
    refs = [r for batch in ctx.data.epoch_batches(0) for r in batch][:4]
    batch = ctx.data.load_batch(refs, epoch=0, step=0, cache=ctx.cache, encode_fn=ctx.encode_fn)
    latents, captions = batch.latents.float(), list(batch.captions)
    result = train(cfg, progress=False)

    folder = ensure_tiny_model("sd1")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    before = _pipeline_loss(pipe, latents, captions)
    pipe.load_lora_weights(str(result.lora_path))
    assert not [r.getMessage() for r in library_warnings if "key" in r.getMessage().lower()]
    after = _pipeline_loss(pipe, latents, captions)
    assert after < 0.8 * before, (before, after)
    _assert_fused_deltas(pipe, result.lora_path)


def _module(pipe, component: str, path: str) -> torch.nn.Module:
    root = getattr(pipe, component)
    try:
        module = root.get_submodule(path)
    except AttributeError:  # transformers >= 5.6 has no `text_model.` level
        module = root.get_submodule(path.removeprefix("text_model."))
    return getattr(module, "base_layer", module)


def _assert_fused_deltas(pipe, lora_path: Path) -> None:
    """After fuse_lora(1), every patched weight moved by (alpha/dim)·up@down of the file."""
    from lorakiln.models.family import SD1
    from lorakiln.models.names.kohya import kohya_to_diffusers_module

    tensors = _tensors(lora_path)
    names = sorted({k.split(".")[0] for k in tensors})
    assert len(names) == 192 + 72
    targets = {n: _module(pipe, *kohya_to_diffusers_module(n, SD1)) for n in names}
    before = {n: m.weight.detach().clone() for n, m in targets.items()}
    pipe.fuse_lora(lora_scale=1.0)
    for n, m in targets.items():
        down, up = tensors[f"{n}.lora_down.weight"].float(), tensors[f"{n}.lora_up.weight"].float()
        scale = tensors[f"{n}.alpha"].float() / down.shape[0]
        expected = (scale * (up.flatten(1) @ down.flatten(1))).reshape(before[n].shape)
        torch.testing.assert_close(m.weight.detach() - before[n], expected, rtol=2e-3,
                                   atol=2e-3 * expected.abs().max().item() + 1e-7, msg=n)


def _interrupt_at(step: int, signum: int = signal.SIGINT):
    def callback(event: str, info: dict) -> None:
        if event == "step" and info["step"] == step:
            os.kill(os.getpid(), signum)
    return callback


def test_resume_matches_uninterrupted_run(run_config, tmp_path) -> None:
    common = dict(train__max_train_epochs=2, output__save_every_n_epochs=1, output__save_state=True,
                  data__shuffle_caption=True, data__caption_dropout_rate=0.3, network__network_dropout=0.1,
                  train__lr_scheduler="cosine", train__optimizer_type="AdamW")
    full = train(run_config(output__output_dir=str(tmp_path / "full"), **common), progress=False)

    cfg = run_config(output__output_dir=str(tmp_path / "cut"), **common)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, callbacks=[_interrupt_at(13)], progress=False)  # mid-epoch 2
    assert stop.value.lora.name == "last-step00000013.safetensors" and stop.value.lora.is_file()
    assert (stop.value.state / "state.json").is_file()
    resumed = train(run_config(output__output_dir=str(tmp_path / "cut"),
                               train__resume=str(stop.value.state), **common), progress=False)
    assert resumed.steps == full.steps == 20
    a, b = _tensors(full.lora_path), _tensors(resumed.lora_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # numbering continued: the epoch-1 file came from the first half of the cut run
    assert (tmp_path / "cut" / "last-000001.safetensors").is_file()


def test_step_saves_write_state_too(run_config) -> None:
    """`save_state` promises a state with every saved LoRA, the step-numbered ones included, so a
    long run killed without a signal (power cut) resumes from its last step save."""
    seen: dict[int, int] = {}
    cfg = run_config(output__save_every_n_steps=7, output__save_state=True)

    def on_save(event: str, info: dict) -> None:
        state = Path(cfg.output.output_dir) / "last-state" / "state.json"
        if event == "save" and "-step" in str(info["path"]):
            seen[int(str(info["path"]).rsplit("step", 1)[1][:8])] = json.loads(state.read_text())["position"]["global_step"]

    train(cfg, callbacks=[on_save], progress=False)
    assert seen == {7: 7}


def test_non_finite_loss_stops_with_files_named(run_config, monkeypatch) -> None:
    real = loop_module.compute_loss

    def poisoned(ctx, batch, step, micro):
        loss = real(ctx, batch, step, micro)
        return loss * float("nan") if step == 2 else loss

    monkeypatch.setattr(loop_module, "compute_loss", poisoned)
    cfg = run_config(output__save_every_n_steps=1)
    with pytest.raises(TrainingError) as err:
        train(cfg, progress=False)
    text = str(err.value)
    assert "step 3" in text and "img" in text and ".png" in text and "learning rate" in text
    out = Path(cfg.output.output_dir)
    assert "last-step00000002.safetensors" in text  # the last good checkpoint is named
    assert (out / "last-step00000002.safetensors").is_file()
    assert not (out / "last-step00000003.safetensors").exists()
    assert all(torch.isfinite(t.float()).all() for t in _tensors(out / "last-step00000002.safetensors").values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_loadable_lora_and_state(run_config, signum) -> None:
    from lorakiln.networks.export import read_lora_file
    from lorakiln.training.state import load_state

    cfg = run_config()
    # what the test process had (a suite started in the background by a shell ignores SIGINT)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, callbacks=[_interrupt_at(4, signum)], progress=False)
    tensors, meta = read_lora_file(stop.value.lora)
    assert meta["ss_steps"] == "4" and tensors
    state = load_state(stop.value.state)
    assert state.position.global_step == 4
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
