"""The real-model examples (`examples/sd15-character`, `examples/sdxl-pivotal`) pass `--dry-run`
against a tiny stand-in of their family, on a small generated dataset, with nothing but the model
and the data folder overridden; and they say what their presets say."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lorakiln.cli import main
from lorakiln.config.presets import PRESETS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def lorakiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's cache (a dry run builds nothing, but says so if it tried)."""
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))


def _photo(path: Path, size: int, seed: int) -> None:
    """A textured, sharp picture at the training size: blocks of colour and a ring."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((size, size), Image.NEAREST)
    ImageDraw.Draw(image).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], outline=(255, 255, 255),
                                  width=max(2, size // 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _kohya_dataset(root: Path) -> Path:
    """`15_zwx man/`, the SD 1.5 example's layout: 3 captioned 512-px photos."""
    for i in range(3):
        _photo(root / "15_zwx man" / f"{i}.png", 512, i)
        (root / "15_zwx man" / f"{i}.txt").write_text(f"photo of zwx man, picture {i}", encoding="utf-8")
    return root


def _imagefolder_dataset(root: Path) -> Path:
    """The SDXL example's layout: 5 1024-px images and a metadata.jsonl with TOK captions."""
    rows = []
    for i in range(5):
        _photo(root / f"{i}.png", 1024, i)
        rows.append({"file_name": f"{i}.png", "prompt": f"a photo of TOK, a toy, picture {i}"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return root


@pytest.mark.parametrize(("example", "model", "dataset", "steps"), [
    ("sd15-character", "tiny:sd1", _kohya_dataset, "optimizer steps: 225"),  # 3 images × 15 repeats × 5 epochs
    ("sdxl-pivotal", "tiny:sdxl", _imagefolder_dataset, "optimizer steps: 1000"),
])
def test_example_passes_the_dry_run_on_a_tiny_stand_in(example: str, model: str, dataset, steps: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path / "train")
    config = EXAMPLES / example / "config.toml"
    rc = main(["train", str(config), "--dry-run", "--set", f'model.pretrained_model="{model}"',
               "--set", f"data.train_data_dir={json.dumps(str(data))}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert steps in out and f"base model: {model} (built into lorakiln)" in out and "\ndevice: " in out
    assert not (config.parent / "output").exists() and not (config.parent / "outputs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(("example", "preset"), [("sd15-character", "kohya-character"),
                                                 ("sdxl-pivotal", "pivotal-prodigy")])
def test_example_spells_out_its_preset(example: str, preset: str) -> None:
    """Each example writes its preset's values out (so a user sees and edits them); they must not drift."""
    raw = tomllib.loads((EXAMPLES / example / "config.toml").read_text(encoding="utf-8"))
    assert "preset" not in raw
    for section, values in PRESETS[preset].items():
        for key, value in values.items():
            assert raw[section][key] == value, f"{example}: {section}.{key}"
    assert (EXAMPLES / example / "README.md").is_file()


def test_the_sd15_example_has_its_sample_prompts() -> None:
    raw = tomllib.loads((EXAMPLES / "sd15-character" / "config.toml").read_text(encoding="utf-8"))
    assert raw["data"]["resolution"] == "512,512" and raw["data"]["enable_bucket"] is True
    prompts = (EXAMPLES / "sd15-character" / raw["validation"]["sample_prompts"]).read_text(encoding="utf-8")
    assert "--w 512 --h 512" in prompts
