"""`lorakiln dataset check`: scan errors and warnings as findings, the trainer's step arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lorakiln.cli import main
from lorakiln.config.load import build_config
from lorakiln.prep.check import check_dataset
from lorakiln.training.plan import build_data, describe_plan


def _cfg(root: Path, **data):
    raw = {"model": {"pretrained_model": "tiny:sd1"},
           "data": {"train_data_dir": str(root), "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128,
                    **data},
           "train": {"train_batch_size": 2, "max_train_epochs": 3}}
    return build_config(raw)


def test_step_arithmetic_equals_the_trainer(tmp_path: Path, noise_image) -> None:
    root = tmp_path / "train"
    sizes = [(96, 64), (90, 60), (64, 96), (80, 80), (64, 64), (128, 64), (64, 128)]
    for i, size in enumerate(sizes):
        noise_image(root / ("7_zwx toy" if i < 4 else "3_sks") / f"{i}.png", size, seed=i, caption=f"zwx sks {i}")
    cfg = _cfg(root)
    report = check_dataset(cfg)
    _, data, plan = describe_plan(cfg, log=None)
    assert report.total_steps == plan.total_steps and report.epochs == plan.num_epochs == 3
    # ... and equals the batches the loader really produces
    _, data = build_data(cfg)
    assert report.total_steps == sum(len(data.epoch_batches(e)) for e in range(3))
    assert report.steps_lines[-1] == f"optimizer steps: {plan.total_steps}"
    assert sum(v["samples"] for v in report.buckets.values()) == 4 * 7 + 3 * 3
    assert not report.errors


def test_unreadable_truncated_and_colliding_files_are_errors(tmp_path: Path, noise_image) -> None:
    root = tmp_path / "train"
    good = noise_image(root / "5_zwx" / "a.png", seed=1, caption="zwx")
    noise_image(root / "5_zwx" / "a.jpg", seed=2, caption=None)  # same stem as a.png
    (root / "5_zwx" / "junk.png").write_bytes(b"not an image at all")
    full = noise_image(root / "5_zwx" / "cut.jpg", (256, 256), seed=3, caption="zwx")
    full.write_bytes(full.read_bytes()[:2000])  # a truncated download
    noise_image(root / "5_zwx" / "small.png", (32, 32), seed=4, caption="zwx")
    report = check_dataset(_cfg(root))
    errors = {Path(p).name: f.message for f in report.errors for p in f.paths}
    assert "cannot be read" in errors["junk.png"] and "cannot be read" in errors["cut.jpg"]
    assert "share the name 'a'" in errors["a.png"] == errors["a.jpg"]
    assert any(f.code == "low-resolution" for f in report.warnings)  # measured although the scan failed
    assert good.exists()


def test_caption_problems_are_warnings(tmp_path: Path, noise_image) -> None:
    root = tmp_path / "train"
    noise_image(root / "5_zwx" / "a.png", seed=1, caption="zwx, a")
    noise_image(root / "5_zwx" / "b.png", seed=2, caption=None)  # missing
    noise_image(root / "5_zwx" / "c.png", seed=3, caption="")  # empty
    noise_image(root / "5_zwx" / "d.png", seed=4, caption="zwx, d", ext=".caption")  # other extension
    codes = {f.code: f for f in check_dataset(_cfg(root)).warnings}
    assert "3 image(s) have no .txt caption (2 missing, 1 empty)" in codes["missing-caption"].message
    assert "caption_extension = '.caption'" in codes["caption-extension"].message


def test_cli_text_json_and_exit_codes(tmp_path: Path, noise_image, capsys) -> None:
    root = tmp_path / "train"
    for i in range(3):
        noise_image(root / "10_zwx" / f"{i}.png", (600, 600), seed=i, caption=f"zwx, shot {i}")
    assert main(["dataset", "check", str(root), "--epochs", "5"]) == 0
    text = capsys.readouterr().out
    assert "3 image(s), 0 error(s)" in text and "total steps = 30 batches x 5 epochs = 150" in text
    assert main(["dataset", "check", str(root), "--json", "--batch-size", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["total_steps"] == 15 and data["buckets"] == {"512x512": {"images": 3, "samples": 30}}
    (root / "10_zwx" / "0.txt").write_text("a photo", encoding="utf-8")
    assert main(["dataset", "check", str(root)]) == 0
    assert main(["dataset", "check", str(root), "--strict"]) == 1  # caption without the trigger word
    (root / "10_zwx" / "bad.png").write_bytes(b"xx")
    assert main(["dataset", "check", str(root), "--no-images"]) == 1
    assert "bad.png" in capsys.readouterr().out


def test_cli_check_with_run_toml(tmp_path: Path, noise_image, capsys) -> None:
    root = tmp_path / "train"
    for i in range(4):
        noise_image(root / "15_zwx" / f"{i}.png", (512, 512), seed=i, caption="zwx")
    (tmp_path / "run.toml").write_text('[model]\npretrained_model = "tiny:sd1"\n[data]\ntrain_data_dir = "train"\n'
                                       "[train]\nmax_train_epochs = 5\n", encoding="utf-8")
    assert main(["dataset", "check", "--config", str(tmp_path / "run.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_steps"] == 4 * 15 * 5


def test_token_cli(capsys) -> None:
    assert main(["dataset", "token", "john"]) == 1
    assert "rank 1742" in capsys.readouterr().out
    assert main(["dataset", "token", "anantn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["pieces"] == ["an", "ant", "n</w>"]


def test_trainer_prints_the_same_warnings_before_loading(tmp_path: Path, noise_image, monkeypatch) -> None:
    root = tmp_path / "train"
    for i in range(3):
        noise_image(root / "5_john" / f"{i}.png", (96, 96), seed=i, caption=f"john, shot {i}")
    noise_image(root / "5_john" / "small.png", (40, 40), seed=7, caption="john, small")
    import lorakiln.models.configured as configured

    monkeypatch.setattr(configured, "load_configured_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    lines: list[str] = []
    describe_plan(_cfg(root), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: ")]
    check = {f.message for f in check_dataset(_cfg(root)).warnings}
    assert {w.removeprefix("warning: ") for w in warnings} == check
    assert any("fewer pixels" in w for w in warnings) and any("rank 1742" in w for w in warnings)


def test_one_run_lists_every_finding_with_an_unreadable_image(tmp_path: Path, noise_image) -> None:
    root = tmp_path / "train"
    folder = root / "5_zwx"
    for i in range(3):
        noise_image(folder / f"{i}.png", (200, 200), seed=i, caption=f"zwx, shot {i}")
    (folder / "junk.png").write_bytes(b"not an image at all")
    noise_image(folder / "d.png", (200, 200), seed=4, caption="zwx, d", ext=".caption")  # another extension
    noise_image(folder / "e.png", (200, 200), seed=5, caption=None)  # missing
    noise_image(folder / "tiny.png", (14, 25), seed=6, caption="zwx, tiny")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (200, 200), dtype=np.uint8), "L").save(folder / "bw.png")
    (folder / "bw.txt").write_text("zwx, street", encoding="utf-8")
    noise_image(root / "5_" / "x.png", (200, 200), seed=8, caption="a dog")  # a folder without trigger word
    report = check_dataset(_cfg(root, resolution=512))
    codes = {f.code: f for f in report.findings}
    [error] = [f for f in report.errors if f.code == "dataset"]
    assert error.paths == (str(folder / "junk.png"),) and "cannot be read" in error.message
    assert codes["caption-extension"].paths == (str(folder / "d.caption"),)
    assert str(folder / "e.png") in codes["missing-caption"].paths
    assert codes["no-trigger-word"].paths == (str(root / "5_"),)
    assert codes["too-small"].severity == "error" and codes["too-small"].paths == (str(folder / "tiny.png"),)
    assert codes["grayscale"].paths == (str(folder / "bw.png"),)
    assert report.total_steps is None and "once the errors above are fixed" in report.steps_lines[0]
    text = report.format()
    assert text.index("ERROR") < text.index("WARNING")


def test_json_lists_the_paths_of_every_finding_about_files(tmp_path: Path, noise_image, capsys) -> None:
    root = tmp_path / "train"
    folder = root / "10_anantn person"
    for i in range(3):
        noise_image(folder / f"{i}.png", seed=i, caption=f"anantn, shot {i}")
    noise_image(folder / "e.png", seed=4, caption=None)
    noise_image(folder / "f.png", seed=5, caption="a man")
    (folder / "gone.png").write_bytes(b"xx")
    assert main(["dataset", "check", str(root), "--json", "--resolution", "64"]) == 1
    data = json.loads(capsys.readouterr().out)
    about_files = {"dataset", "missing-caption", "caption-without-token", "too-small", "low-resolution"}
    for finding in data["errors"] + data["warnings"]:
        if finding["code"] in about_files:
            assert finding["paths"], finding
            assert all(Path(p).exists() for p in finding["paths"])
    [error] = data["errors"]
    assert error["paths"] == [str(folder / "gone.png")]


def test_fix_commands_in_the_report_paste_into_a_shell(tmp_path: Path, noise_image, capsys) -> None:
    import shlex

    root = tmp_path / "train"
    folder = root / "10_anantn person"
    noise_image(folder / "a.png", seed=1, caption="anantn, a")
    noise_image(folder / "b.png", seed=2, caption="a man")
    assert main(["dataset", "check", str(root), "--resolution", "64", "--no-images"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "[caption-without-token]" in line)
    command = line.split("`")[1]
    assert shlex.split(command)[:4] == ["lorakiln", "dataset", "edit", str(folder)]
    assert main(["dataset", "edit", *shlex.split(command)[3:]]) == 0
    assert (folder / "b.txt").read_text(encoding="utf-8") == "photo of anantn, a man"


def test_pivotal_tuning_keeps_the_token_in_captions(tmp_path: Path, noise_image) -> None:
    """The diffusers advanced recipe puts the token in every caption: no advice against that."""
    root = tmp_path / "train"
    for i, caption in enumerate(["a photo of TOK person, anantn, black hair", "a photo of TOK person, anantn, beach",
                                 "a photo of TOK person, anantn, smiling"]):
        noise_image(root / "10_anantn person" / f"{i}.png", seed=i, caption=caption)
    raw = {"model": {"pretrained_model": "tiny:sdxl"}, "data": {"train_data_dir": str(root), "resolution": 64},
           "pivotal": {"train_text_encoder_ti": True, "token_abstraction": "TOK"}}
    report = check_dataset(build_config(raw))
    advice = " ".join(f.message for f in report.findings)
    assert not any(f.code in ("trait-in-every-caption", "caption-without-token", "common-token")
                   for f in report.findings), advice
    assert "--remove" not in advice
    raw["pivotal"]["token_abstraction"] = "SKS,TOK"  # two concepts: either token counts
    assert not any(f.code == "caption-without-token" for f in check_dataset(build_config(raw)).findings)
