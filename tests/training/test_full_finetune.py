"""`train.mode = "full"`: every weight trains, the output is a whole model that loads back, EMA,
and resume is exact."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from lorakiln.errors import ConfigError
from lorakiln.models.loading import load_base_model
from lorakiln.training.loop import TrainingInterrupted, train


def _loss(bundle, latents: torch.Tensor, captions: list[str]) -> float:
    from lorakiln.inference.pipeline import build_pipeline
    from lorakiln.inference.weighting import encode_prompt

    pipe = build_pipeline(bundle)
    gen = torch.Generator().manual_seed(5)
    total = 0.0
    with torch.no_grad():
        hidden = torch.cat([encode_prompt(pipe, bundle, c)[0] for c in captions])
        for t in (100, 400, 700):
            noise = torch.randn(latents.shape, generator=gen)
            ts = torch.full((latents.shape[0],), t)
            pred = bundle.unet(bundle.noise_scheduler.add_noise(latents, noise, ts), ts, hidden).sample
            total += float(torch.nn.functional.mse_loss(pred, noise))
    return total / 3


def test_full_finetune_lowers_loss_and_writes_a_loadable_model(run_config) -> None:
    from lorakiln.training.prepare import prepare

    cfg = run_config(train__mode="full", train__max_train_epochs=4, train__unet_lr=1e-3,
                     train__text_encoder_lr=1e-4, output__save_diffusers=True, output__save_precision="float",
                     output__save_every_n_epochs=2)
    ctx = prepare(cfg, log=None)
    refs = [r for batch in ctx.data.epoch_batches(0) for r in batch][:4]
    batch = ctx.data.load_batch(refs, epoch=0, step=0, cache=ctx.cache, encode_fn=ctx.encode_fn)
    latents, captions = batch.latents.float(), list(batch.captions)
    before = _loss(ctx.bundle, latents, captions)
    base_te = {k: v.clone() for k, v in ctx.bundle.text_encoders[0].state_dict().items()}

    result = train(cfg, progress=False)
    out = Path(cfg.output.output_dir)
    assert result.lora_path == out / "last.safetensors" and (out / "last-000002.safetensors").is_file()
    single = load_base_model(str(result.lora_path))
    folder = load_base_model(str(out / "last"))
    assert _loss(single, latents, captions) < 0.8 * before
    for a, b in ((single.unet, folder.unet), (single.text_encoders[0], folder.text_encoders[0])):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    moved = [k for k, v in single.text_encoders[0].state_dict().items() if not torch.equal(v, base_te[k])]
    assert moved  # the text encoder trained too
    assert folder.tokenizers[0].get_vocab() == ctx.bundle.tokenizers[0].get_vocab()


def test_text_encoder_lr_zero_keeps_it_frozen(run_config) -> None:
    from lorakiln.training.prepare import prepare

    ctx = prepare(run_config(train__mode="full", train__text_encoder_lr=0, train__max_train_steps=1), log=None)
    assert [g["name"] for g in ctx.optimizer.param_groups] == ["unet"]
    assert not any(p.requires_grad for p in ctx.bundle.text_encoders[0].parameters())


def test_ema_is_what_gets_saved(run_config, tmp_path: Path) -> None:
    from lorakiln.training.prepare import prepare

    common = dict(train__mode="full", train__max_train_steps=3, train__text_encoder_lr=0,
                  output__save_precision="float")
    ctx = prepare(run_config(output__output_dir=str(tmp_path / "probe"), **common), log=None)
    base = {k: v.clone() for k, v in ctx.bundle.unet.state_dict().items()}
    plain = load_base_model(str(train(run_config(output__output_dir=str(tmp_path / "p"), **common),
                                      progress=False).lora_path)).unet.state_dict()
    ema = load_base_model(str(train(run_config(output__output_dir=str(tmp_path / "e"), train__ema_decay=0.5,
                                               **common), progress=False).lora_path)).unet.state_dict()
    # Warm-up decays (1+t)/(10+t) = 0.1, 0.18, 0.25 leave the average close to, but not at, the last
    # weights: it lies between the base and the last iterate.
    key = "conv_in.weight"
    assert not torch.equal(ema[key], plain[key]) and not torch.equal(ema[key], base[key])
    assert (ema[key] - plain[key]).abs().mean() < (base[key] - plain[key]).abs().mean()


def _interrupt_at(step: int):
    def callback(event: str, info: dict) -> None:
        if event == "step" and info["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def test_full_resume_is_exact(run_config, tmp_path: Path) -> None:
    # Signals on (the training tests' configs turn them off): in full mode they are the validation
    # loss alone (no drift), measured with the EMA weights applied; cheap, and run nowhere else.
    common = dict(train__mode="full", train__max_train_epochs=2, train__ema_decay=0.9, output__save_state=True,
                  output__save_precision="float", train__unet_lr=5e-4, train__text_encoder_lr=1e-4,
                  validation__signals=True)
    whole = train(run_config(output__output_dir=str(tmp_path / "a"), **common), progress=False)
    with pytest.raises(TrainingInterrupted) as stop:
        train(run_config(output__output_dir=str(tmp_path / "b"), **common), callbacks=[_interrupt_at(7)],
              progress=False)
    resumed = train(run_config(output__output_dir=str(tmp_path / "b"), train__resume=str(stop.value.state),
                               **common), progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(whole.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_mode_refuses_lora_only_options(run_config) -> None:
    with pytest.raises(ConfigError, match="network_weights"):
        run_config(train__mode="full", network__network_weights="x.safetensors")
