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
    assert image.size == (64, 64)
    assert image.text["parameters"] == "photo of zwx\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 0, Size: 64x64"


def test_validation_does_not_change_training(run_config, tmp_path: Path) -> None:
    common = dict(train__max_train_epochs=2, network__network_dropout=0.2, data__shuffle_caption=True)
    plain = train(run_config(output__output_dir=str(tmp_path / "a"), **common), progress=False)
    with_val = train(run_config(output__output_dir=str(tmp_path / "b"), validation__validation_prompt="zwx",
                                validation__validation_steps=3, **FAST, **common), progress=False)
    a, b = load_file(str(plain.lora_path)), load_file(str(with_val.lora_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "b" / "validation").glob("*.png"))) > 2


def test_kohya_sample_prompts_and_final_epochs_grid(run_config, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\nphoto of zwx, (red:1.2) --n blurry --w 64 --h 64 --s 2 --l 5 --d 42\n\n"
                       "a toy --s 2 --d 7\n", encoding="utf-8")
    events = []
    cfg = run_config(train__max_train_epochs=2, output__save_every_n_epochs=1,
                     validation__sample_prompts=str(prompts), validation__sample_every_n_epochs=1,
                     validation__validation_inference_steps=2, validation__validation_resolution=64)
    train(cfg, callbacks=[lambda e, i: events.append((e, i))], progress=False)
    out = Path(cfg.output.output_dir)
    samples = sorted((out / "sample").glob("*.png"))
    assert len(samples) == 4  # 2 prompts after epoch 1 and at the end
    text = Image.open(samples[0]).text["parameters"]
    assert text.startswith("photo of zwx, (red:1.2)\nNegative prompt: blurry\nSteps: 2") and "Seed: 42" in text
    grid = out / "last_epochs_x_strengths.png"
    assert grid.is_file() and dict(events[-1][1])["grid"] == grid
    phases = [i for e, i in events if e == "phase"]  # what a watcher sees between the steps
    names = [p["name"] for n, p in enumerate(phases) if n == 0 or phases[n - 1]["name"] != p["name"]]
    assert names == ["preparing", "loading model", "caching latents", "training", "rendering samples", "saving",
                     "rendering samples", "saving", "final grids"]
    renders = [(p["done"], p["total"], p["folder"], p["step"]) for p in phases if p["name"] == "rendering samples"]
    assert renders == [(0, 2, "sample", 10), (1, 2, "sample", 10), (0, 2, "sample", 20), (1, 2, "sample", 20)]
    assert [p["step"] for p in phases if p["name"] == "saving"] == [10, 20]
    image = Image.open(grid)
    assert image.width > 2 * 64 and image.height > 6 * 64  # 2 files x 6 strengths


def test_bad_sample_line_names_file_and_line(run_config, tmp_path: Path) -> None:
    import pytest

    from lorakiln.errors import ConfigError

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ok --s 2 --ss k_euler_a\nbad --x 3\n", encoding="utf-8")
    cfg = run_config(validation__sample_prompts=str(prompts), train__max_train_steps=1)
    from lorakiln.training.plan import describe_plan

    with pytest.raises(ConfigError, match=r"prompts.txt:2: unknown sample option --x"):
        describe_plan(cfg, log=None)  # before any model is loaded


def test_sample_line_sampler_option_takes_both_spellings() -> None:
    import pytest

    from lorakiln.errors import ConfigError
    from lorakiln.inference.infotext import GenerationParams
    from lorakiln.training.samples import parse_sample_line

    assert parse_sample_line("a --ss dpmsolver++ --s 3", GenerationParams()).sampler == "dpmsolver++"
    assert parse_sample_line("a --ss DPM++ 2M Karras", GenerationParams()).sampler == "DPM++ 2M Karras"
    with pytest.raises(ConfigError, match=r"p.txt:4: --ss: unknown sampler 'eulr'"):
        parse_sample_line("a --ss eulr", GenerationParams(), "p.txt:4")


def test_pivotal_grids_load_each_epochs_embedding_with_its_lora(run_config, tmp_path: Path, monkeypatch) -> None:
    """The final grids prompt `last_emb` as a user of the saved files does, and the epochs axis
    swaps `last-000001_emb` in with `last-000001`; several sample prompts add an epochs × prompts
    sheet (the quickstart's "zwx in other colours")."""
    from lorakiln.inference import generate as generate_module

    loaded: list[list[str]] = []
    real = generate_module.load_embeddings
    monkeypatch.setattr(generate_module, "load_embeddings",
                        lambda pipe, bundle, files: loaded.append(sorted(files)) or real(pipe, bundle, files))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("photo of zwx --s 2 --d 1\na green zwx --s 2 --d 2\na toy --s 2 --d 3\n", encoding="utf-8")
    cfg = run_config(train__max_train_epochs=2, output__save_every_n_epochs=1, pivotal__train_text_encoder_ti=True,
                     pivotal__token_abstraction="zwx", pivotal__train_text_encoder_ti_frac=1.0,
                     validation__sample_prompts=str(prompts), validation__validation_resolution=64)
    result = train(cfg, progress=False)
    out = Path(cfg.output.output_dir)
    assert {p.name for p in out.glob("*_emb.safetensors")} == {"last-000001_emb.safetensors", "last_emb.safetensors"}
    assert ["last-000001_emb"] in loaded and ["last_emb"] in loaded
    assert result.grid_path == out / "last_epochs_x_strengths.png"
    assert result.prompts_grid_path == out / "last_epochs_x_prompts.png"
    sheet = Image.open(result.prompts_grid_path)
    assert sheet.width > 2 * 64 and 3 * 64 < sheet.height < 4 * 64 + 64  # 2 files x 3 prompts


def test_prompts_with_the_same_settings_render_together(run_config, tmp_path: Path) -> None:
    """Sample prompts that differ only in prompt and seed share one batched sampling call; the
    progress events then come per group, and every prompt still gets its own images and seed."""
    from lorakiln.inference.infotext import GenerationParams
    from lorakiln.training.validation import render_groups

    base = GenerationParams(steps=2, width=64, height=64)
    params = [base, GenerationParams(prompt="b", seed=5, steps=2, width=64, height=64),
              GenerationParams(steps=3, width=64, height=64), GenerationParams(prompt="c", steps=2, width=64, height=64)]
    assert render_groups(params) == [[0, 1, 3], [2]]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("photo of zwx --s 2 --d 1\na toy --s 2 --d 5\na zwx toy --s 3 --d 9\n", encoding="utf-8")
    events = []
    cfg = run_config(train__max_train_steps=2, validation__sample_prompts=str(prompts),
                     validation__validation_resolution=64, validation__final_grid=False)
    train(cfg, callbacks=[lambda e, i: events.append((e, i))], progress=False)
    renders = [(i["done"], i["total"]) for e, i in events if e == "phase" and i["name"] == "rendering samples"]
    assert renders == [(0, 3), (2, 3)]
    samples = sorted((Path(cfg.output.output_dir) / "sample").glob("*.png"))
    seeds = sorted(Image.open(p).text["parameters"].split("Seed: ")[1].split(",")[0] for p in samples)
    assert seeds == ["1", "5", "9"]
