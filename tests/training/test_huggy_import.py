"""The diffusers advanced SDXL recipe's two Huggy command lines, through `config import`, train on the tiny SDXL model."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from lorakiln.config.importers import import_config
from lorakiln.config.load import build_config
from lorakiln.training.loop import train

FIXTURES = Path(__file__).resolve().parents[1] / "config" / "fixtures"


def _huggy_folder(root: Path) -> Path:
    """A stand-in for ./huggy_clean: an ImageFolder with a `prompt` column, as the recipe's dataset."""
    root.mkdir()
    rows = []
    for i, colour in enumerate(["gold", "orange"]):
        Image.new("RGB", (80, 64), colour).save(root / f"huggy_{i}.png")
        rows.append({"file_name": f"huggy_{i}.png", "prompt": f"a TOK emoji, waving, {colour} background"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return root


@pytest.mark.parametrize("fixture", ["huggy_adamw.sh", "huggy_shared_params.sh"])
def test_huggy_command_trains_on_tiny_sdxl(fixture: str, tmp_path: Path) -> None:
    result = import_config((FIXTURES / fixture).read_text(encoding="utf-8"), source_name=fixture)
    raw = tomllib.loads(result.text)
    assert raw["pivotal"]["train_text_encoder_ti"] is True and raw["network"]["network_dim"] == 32
    # What this machine cannot have: the SDXL weights and VAE (hub) and a 1024-px, 1000-step budget.
    raw["model"] = {"pretrained_model": "tiny:sdxl"}
    raw["data"]["train_data_dir"] = str(_huggy_folder(tmp_path / "huggy_clean"))
    cfg = build_config(raw, base_dir=tmp_path, overrides=[
        "data.resolution=64", "data.min_bucket_reso=64", "train.max_train_steps=2",
        "train.train_batch_size=1", "validation.validation_inference_steps=2"])
    assert cfg.data.instance_prompt == "a TOK emoji"
    assert cfg.validation.signals  # on, as a user runs it; the other SDXL and pivotal training tests turn them off
    run = train(cfg, progress=False)
    out = run.lora_path.parent
    assert run.steps == 2 and run.lora_path.name == f"{cfg.output.output_name}.safetensors"
    assert (out / f"{cfg.output.output_name}_emb.safetensors").is_file()
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert list((out / "validation").glob("*.png"))  # the Yoda validation prompt was rendered
