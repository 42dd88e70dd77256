"""Training options run end to end on the tiny model (two steps each) and do what they say."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakiln.training.loop import train


@pytest.mark.parametrize("opts", [  # signals on under autocast (the training tests' configs turn them off)
    {"train__mixed_precision": "bf16", "train__gradient_checkpointing": True, "validation__signals": True},
    {"train__mixed_precision": "fp16", "train__gradient_accumulation_steps": 2, "validation__signals": True},
    {"train__min_snr_gamma": 5.0, "train__noise_offset": 0.1, "model__clip_skip": 2, "train__sdpa": False},
    {"train__optimizer_type": "Prodigy", "train__learning_rate": 1.0, "train__unet_lr": 1.0,
     "train__text_encoder_lr": 1.0, "train__optimizer_args": ["safeguard_warmup=True", "use_bias_correction=True"]},
    {"train__optimizer_type": "Adafactor", "train__lr_scheduler": "adafactor",
     "train__optimizer_args": ["relative_step=True", "scale_parameter=True", "warmup_init=False"]},
    {"train__optimizer_type": "AdamW8bit", "train__lr_scheduler": "polynomial", "train__lr_warmup_steps": 1},
    {"data__shuffle_caption": True, "data__keep_tokens": 1, "data__flip_aug": True,
     "data__cache_latents_to_disk": True},
], ids=["bf16-gc", "fp16-accum", "snr-offset-clipskip-nosdpa", "prodigy", "adafactor", "adamw8bit", "captions-flip-disk"])
def test_option_combinations_train(run_config, opts) -> None:
    result = train(run_config(train__max_train_steps=2, **opts), progress=False)
    assert result.steps == 2 and result.last_loss is not None and math.isfinite(result.last_loss)
    tensors = load_file(str(result.lora_path))
    ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
    assert any(t.abs().sum() > 0 for t in ups), "no LoRA weight moved"


def test_unet_only_has_no_text_encoder_keys(run_config) -> None:
    result = train(run_config(train__max_train_steps=1, network__network_train_unet_only=True), progress=False)
    keys = load_file(str(result.lora_path)).keys()
    assert keys and all(k.startswith("lora_unet_") for k in keys)


def test_text_encoder_lr_zero_freezes_text_encoder(run_config) -> None:
    result = train(run_config(train__max_train_steps=1, train__text_encoder_lr=0.0), progress=False)
    assert all(k.startswith("lora_unet_") for k in load_file(str(result.lora_path)))


def test_network_weights_continue_from_file(run_config, tmp_path: Path) -> None:
    first = train(run_config(train__max_train_steps=2, output__save_precision="float"), progress=False)
    start = load_file(str(first.lora_path))
    second = train(run_config(train__max_train_steps=1, output__output_dir=str(tmp_path / "again"),
                              output__save_precision="float", network__network_weights=str(first.lora_path),
                              train__unet_lr=1e-12, train__text_encoder_lr=1e-12), progress=False)
    again = load_file(str(second.lora_path))
    for key, tensor in start.items():  # a ~zero learning rate keeps the loaded weights
        torch.testing.assert_close(again[key], tensor, atol=1e-6, rtol=0)


def test_max_train_steps_overrides_epochs(run_config) -> None:
    result = train(run_config(train__max_train_steps=13, train__max_train_epochs=1), progress=False)
    assert result.steps == 13 and result.epochs == 1  # 10 steps per epoch: 1 complete, 1 partial


def test_overlong_captions_are_reported(run_config, tmp_path: Path, capsys) -> None:
    from lorakiln.training.prepare import prepare

    cfg = run_config()
    long_caption = ", ".join(["photo of zwx"] * 40)
    (Path(cfg.data.train_data_dir) / "5_zwx toy" / "img1.txt").write_text(long_caption, encoding="utf-8")
    prepare(cfg, log=print)
    out = capsys.readouterr().out
    assert "1 caption(s) exceed the 75-token window" in out and "img1.png" in out


def test_seed_003_prodigy_settings_reach_the_optimizer(run_config, capsys) -> None:
    from lorakiln.training.prepare import prepare

    cfg = run_config(train__optimizer_type="prodigy", train__learning_rate=1.0, train__unet_lr=1.0,
                     train__text_encoder_lr=0.5, train__adam_beta1=0.9, train__adam_beta2=0.99,
                     train__adam_weight_decay=0.01, train__prodigy_safeguard_warmup=True,
                     train__prodigy_use_bias_correction=True, train__snr_gamma=5.0)
    ctx = prepare(cfg, log=print)
    group = ctx.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.01
    assert group["safeguard_warmup"] is True and group["use_bias_correction"] is True
    assert {g["lr"] for g in ctx.optimizer.param_groups} == {1.0}  # one initial lr, as the diffusers advanced SDXL recipe says
    assert "one initial learning rate" in capsys.readouterr().out
    assert cfg.train.min_snr_gamma == 5.0


def test_optimizer_arg_given_twice_is_an_error(run_config) -> None:
    from lorakiln.errors import ConfigError
    from lorakiln.training.optimizer_setup import optimizer_args

    cfg = run_config(train__adam_weight_decay=0.01, train__optimizer_args=["weight_decay=0.1"])
    with pytest.raises(ConfigError, match="weight_decay"):
        optimizer_args(cfg)


def test_text_encoder_lora_stops_after_its_fraction(run_config) -> None:
    from lorakiln.training import prepare as prepare_module

    seen = {}
    real = prepare_module.prepare

    def spy(cfg, log=None, **kwargs):
        seen["ctx"] = real(cfg, log, **kwargs)
        return seen["ctx"]

    snapshots = []

    def on_step(event: str, info: dict) -> None:
        if event == "step":
            net = seen["ctx"].network
            te = [m.lora_down.weight.detach().clone() for k, m in net.loras() if net.parts[k] != "unet"]
            unet = [m.lora_up.weight.detach().clone() for k, m in net.loras() if net.parts[k] == "unet"][:3]
            snapshots.append((te, unet))

    prepare_module.prepare = spy
    try:
        train(run_config(train__max_train_steps=6, train__train_text_encoder_frac=0.5), callbacks=[on_step],
              progress=False)
    finally:
        prepare_module.prepare = real
    te3, unet3 = snapshots[2]
    te_last, unet_last = snapshots[-1]
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0][0], te3, strict=True))  # trained until 3
    assert all(torch.equal(a, b) for a, b in zip(te3, te_last, strict=True))  # then fixed
    assert not all(torch.equal(a, b) for a, b in zip(unet3, unet_last, strict=True))  # U-Net trains on


def test_text_encoder_outputs_cached_only_while_frozen(run_config) -> None:
    from lorakiln.training.prepare import prepare

    frozen = prepare(run_config(network__network_train_unet_only=True), log=None)
    assert frozen.active_text_cache() is not None
    assert prepare(run_config(), log=None).active_text_cache() is None  # TE LoRA trains
    shuffled = prepare(run_config(network__network_train_unet_only=True, data__shuffle_caption=True), log=None)
    assert shuffled.active_text_cache() is None


def test_text_cache_matches_fresh_encoding_and_resume_stays_exact(run_config, tmp_path: Path) -> None:
    import os
    import signal

    from lorakiln.training.loop import TrainingInterrupted

    common = dict(network__network_train_unet_only=True, train__max_train_epochs=2, output__save_state=True)
    full = train(run_config(output__output_dir=str(tmp_path / "full"), **common), progress=False)
    uncached = train(run_config(output__output_dir=str(tmp_path / "plain"), data__cache_text_encoder_outputs=False,
                                **common), progress=False)

    def stop(event, info):
        if event == "step" and info["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as cut:
        train(run_config(output__output_dir=str(tmp_path / "cut"), **common), callbacks=[stop], progress=False)
    resumed = train(run_config(output__output_dir=str(tmp_path / "cut"), train__resume=str(cut.value.state),
                               **common), progress=False)
    a, b, c = (load_file(str(r.lora_path)) for r in (full, resumed, uncached))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.allclose(a[k].float(), c[k].float(), atol=1e-3) for k in a)


def test_log_with_none_writes_no_tensorboard_files(run_config, tmp_path: Path) -> None:
    from lorakiln.training.events import EventsFile, read_events

    events = tmp_path / "events.jsonl"
    cfg = run_config(train__max_train_steps=2, output__log_with="none")
    result = train(cfg, [EventsFile(events)], progress=False)
    out = Path(cfg.output.output_dir)
    assert result.lora_path.is_file()
    assert not (out / "logs").exists() and not list(out.rglob("events.out.tfevents*"))
    assert [e for e in read_events(events) if e["event"] == "step"]  # the JSON events file stays
    tensorboard = train(run_config(train__max_train_steps=1, output__output_dir=str(tmp_path / "tb")),
                        progress=False)  # the default still writes them: the check above can fail
    assert list((tensorboard.lora_path.parent / "logs").rglob("events.out.tfevents*"))
