"""The shipped toy base model: loads as `toy`, as a single file and as a diffusers folder, and
the README's main command (examples/toy-quickstart) trains on it."""

from __future__ import annotations

from pathlib import Path

import torch

from lorakiln.config.load import load_config
from lorakiln.models.loading import load_base_model
from lorakiln.models.toy import toy_model_path
from lorakiln.toyworld.model import TOY_UNET_CONFIG

ROOT = Path(__file__).resolve().parents[2]
TOY_QUICKSTART = ROOT / "examples" / "toy-quickstart" / "config.toml"


def test_toy_weights_ship_and_load_every_way(tmp_path: Path) -> None:
    from lorakiln.models.save import save_bundle_diffusers

    path = toy_model_path()
    assert path.stat().st_size < 40e6  # "a few tens of MB at most"
    bundle = load_base_model("toy")
    assert list(bundle.unet.config.block_out_channels) == TOY_UNET_CONFIG["block_out_channels"]
    assert bundle.vae.config.scaling_factor != 1.0  # set from the trained encoder
    save_bundle_diffusers(bundle, tmp_path / "toy-diffusers")
    folder = load_base_model(str(tmp_path / "toy-diffusers"))
    for (name, a), b in zip(bundle.unet.state_dict().items(), folder.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), msg=name)


def test_the_toy_quickstart_trains_on_the_shipped_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    from lorakiln.training.loop import train

    cfg = load_config(TOY_QUICKSTART, ["train.max_train_steps=2", "train.max_train_epochs=1",
                                        f'output.output_dir="{tmp_path / "out"}"', "output.save_state=false",
                                        "validation.final_grid=false"])
    assert cfg.model.pretrained_model == "toy"
    cfg.validation.sample_prompts = None
    cfg.validation.sample_every_n_epochs = None
    result = train(cfg, progress=False)
    assert result.steps == 2 and Path(result.lora_path).is_file()
