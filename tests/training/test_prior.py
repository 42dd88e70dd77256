"""Prior preservation and ImageFolder datasets in the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lorakiln.training import class_generation
from lorakiln.training.loop import train
from lorakiln.training.noise import diffusion_loss

PRIOR = dict(prior__with_prior_preservation=True, prior__class_prompt="a photo of a toy",
             prior__num_class_images=3, prior__class_inference_steps=2, prior__sample_batch_size=2,
             train__max_train_steps=2)


def test_loss_is_instance_plus_weighted_class() -> None:
    class Sched:
        class config:  # noqa: N801 (mimics a diffusers config object)
            prediction_type = "epsilon"

    pred = torch.zeros(4, 1, 1, 1)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)  # per-sample mse 1, 4, 9, 16
    is_prior = torch.tensor([False, True, False, True])
    loss = diffusion_loss(pred, target, torch.zeros(4), Sched, is_prior=is_prior, prior_loss_weight=0.5)
    assert loss.item() == pytest.approx((1 + 9) / 2 + 0.5 * (4 + 16) / 2)


def test_class_images_generated_once_then_reused(run_config, tmp_path: Path, monkeypatch) -> None:
    class_dir = tmp_path / "class"
    cfg = run_config(prior__class_data_dir=str(class_dir), **PRIOR)
    train(cfg, progress=False)
    pngs = sorted(class_dir.glob("*.png"))
    assert len(pngs) == 3 and (class_dir / "class_images.json").is_file()
    assert pngs[0].with_suffix(".txt").read_text(encoding="utf-8").strip() == "a photo of a toy"

    def forbidden(*args, **kwargs):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(class_generation, "generate_class_images", forbidden)
    train(run_config(prior__class_data_dir=str(class_dir), output__output_dir=str(tmp_path / "again"), **PRIOR),
          progress=False)
    assert sorted(class_dir.glob("*.png")) == pngs


def test_prior_batches_carry_class_rows(run_config, tmp_path: Path) -> None:
    from lorakiln.training.prepare import prepare

    ctx = prepare(run_config(prior__class_data_dir=str(tmp_path / "class"), **PRIOR), log=None)
    refs = ctx.data.epoch_batches(0)[0]
    batch = ctx.data.load_batch(refs, epoch=0, step=0, cache=ctx.cache, encode_fn=ctx.encode_fn)
    assert batch.num_prior == len(refs) and batch.latents.shape[0] == 2 * len(refs)
    assert [c for c, p in zip(batch.captions, batch.is_prior.tolist(), strict=True) if p] == \
        ["a photo of a toy"] * len(refs)


def test_missing_class_prompt_is_a_clear_error(run_config, tmp_path: Path) -> None:
    from lorakiln.errors import ConfigError

    opts = dict(PRIOR, prior__class_prompt="")
    with pytest.raises(ConfigError, match="class_prompt"):
        train(run_config(prior__class_data_dir=str(tmp_path / "empty"), **opts), progress=False)


def test_imagefolder_with_metadata_trains(run_config, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{colour}.png")
        rows.append({"file_name": f"{colour}.png", "prompt": f"a TOK toy on {colour}", "n": i})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    result = train(run_config(data__train_data_dir=str(folder), data__repeats=2, train__max_train_epochs=1,
                              pivotal__train_text_encoder_ti=True), progress=False)
    assert result.steps == 3  # 3 images x 2 repeats / batch 2
    assert result.lora_path.with_name("last_emb.safetensors").is_file()
