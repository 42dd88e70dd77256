"""Validation renders while training: files, TensorBoard, and no effect on the trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from lorakiln.training.loop import train

FAST = dict(validation__validation_inference_steps=2, validation__num_validation_images=2,
            validation__validation_resolution=64)


def test_validation_images_saved_each_epoch_and_at_end(run_config) -> None:
    events = []
    cfg = run_config(train__max_train_epochs=2, validation__validation_prompt=["photo of zwx", "a toy"], **FAST)
    train(cfg, callbacks=[lambda e, i: events.append(e)], progress=False)
    folder = Path(cfg.output.output_dir) / "validation"
    names = sorted(p.name for p in folder.glob("*.png"))
    # epoch 1 and the end (epoch 2), 2 prompts x 2 images each
    assert len(names) == 8 and names[0] == "e0001-s000010-p0-0.png", names
    assert events.count("validation") == 2
    image = Image.open(folder / names[0])
    assert image.size == (64, 64) and image.text["parameters"].startswith("photo of zwx\nSeed: 0")


def test_validation_does_not_change_training(run_config, tmp_path: Path) -> None:
    common = dict(train__max_train_epochs=2, network__network_dropout=0.2, data__shuffle_caption=True)
    plain = train(run_config(output__output_dir=str(tmp_path / "a"), **common), progress=False)
    with_val = train(run_config(output__output_dir=str(tmp_path / "b"), validation__validation_prompt="zwx",
                                validation__validation_steps=3, **FAST, **common), progress=False)
    a, b = load_file(str(plain.lora_path)), load_file(str(with_val.lora_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "b" / "validation").glob("*.png"))) > 2
