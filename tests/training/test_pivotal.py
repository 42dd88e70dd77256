"""Pivotal tuning in the trainer: new-token embeddings train, pivot, save and resume exactly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakiln.training.loop import TrainingInterrupted, train

PIVOTAL = dict(pivotal__train_text_encoder_ti=True, pivotal__token_abstraction="zwx",
               pivotal__train_text_encoder_ti_frac=0.5, train__max_train_epochs=2)


@pytest.mark.parametrize("model", ["tiny:sd1", "tiny:sdxl"])
def test_new_rows_train_until_the_pivot_and_old_rows_never_change(run_config, model) -> None:
    from lorakiln.training import prepare as prepare_module

    seen: dict[str, object] = {}
    real_prepare = prepare_module.prepare

    def spy(cfg, log=None, **kwargs):
        ctx = real_prepare(cfg, log, **kwargs)
        seen["ctx"] = ctx
        seen["tables"] = [te.get_input_embeddings().weight.detach().clone() for te in ctx.bundle.text_encoders]
        return ctx

    vectors = []

    def on_step(event: str, info: dict) -> None:
        if event == "step":
            ti = seen["ctx"].pivotal
            vectors.append(torch.cat([ti.vectors(i).detach().flatten() for i in range(ti.num_encoders)]))

    cfg = run_config(model__pretrained_model=model, **PIVOTAL)
    import lorakiln.training.prepare

    lorakiln.training.prepare.prepare = spy
    try:
        result = train(cfg, callbacks=[on_step], progress=False)
    finally:
        lorakiln.training.prepare.prepare = real_prepare
    ctx = seen["ctx"]
    assert ctx.pivotal.token_list == ["<s0>", "<s1>"]
    # 20 steps, pivot after 10: rows change in steps 1..10, then stay fixed
    assert not torch.equal(vectors[0], vectors[9])
    assert all(torch.equal(vectors[9], v) for v in vectors[10:])
    for i, te in enumerate(ctx.bundle.text_encoders):
        table_after = te.get_input_embeddings().weight.detach()
        old = min(ctx.pivotal.token_ids(i))  # new tokens are appended after the original vocabulary
        assert torch.equal(table_after[:old], seen["tables"][i][:old])  # every original row bit-identical
    emb = load_file(str(Path(cfg.output.output_dir) / "last_emb.safetensors"))
    keys = list(ctx.bundle.family.ti_file_keys)
    assert sorted(emb) == sorted(keys)
    saved = torch.cat([emb[k].float().flatten() for k in keys])
    assert torch.allclose(saved, vectors[-1].float())
    assert result.lora_path.with_name("last_emb.safetensors").is_file()


def test_captions_use_the_new_tokens(run_config) -> None:
    from lorakiln.training.prepare import prepare

    ctx = prepare(run_config(**PIVOTAL), log=None)
    assert ctx.prompt("photo of zwx, a toy") == "photo of <s0><s1>, a toy"
    ids = ctx.bundle.tokenizers[0]("photo of <s0><s1>").input_ids
    assert ctx.pivotal.token_ids(0) == ids[3:5]


def test_pivotal_resume_is_exact(run_config, tmp_path: Path) -> None:
    common = dict(output__save_state=True, **PIVOTAL)
    full = train(run_config(output__output_dir=str(tmp_path / "full"), **common), progress=False)

    def stop_at_7(event: str, info: dict) -> None:
        if event == "step" and info["step"] == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        train(run_config(output__output_dir=str(tmp_path / "cut"), **common), callbacks=[stop_at_7],
              progress=False)
    resumed = train(run_config(output__output_dir=str(tmp_path / "cut"), train__resume=str(stop.value.state),
                               **common), progress=False)
    for name in ("last.safetensors", "last_emb.safetensors"):
        a, b = load_file(str(full.lora_path.parent / name)), load_file(str(resumed.lora_path.parent / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
