"""Config loading: typos and bad values are errors that name the key; presets and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakiln.config.docs import render_markdown
from lorakiln.config.load import build_config, dump_config, load_config, parse_override
from lorakiln.config.schema import SECTIONS
from lorakiln.errors import ConfigError

BASE = {"model": {"pretrained_model": "tiny:sd1"}, "data": {"train_data_dir": "train"}}


def _build(extra: dict | None = None, overrides: list[str] | None = None):
    raw = {k: dict(v) for k, v in BASE.items()}
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return build_config(raw, base_dir=Path("/base"), overrides=overrides)


def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"train\.unet_lrr.*did you mean 'train\.unet_lr'"):
        _build({"train": {"unet_lrr": 1e-4}})


def test_key_in_wrong_section_names_owner() -> None:
    with pytest.raises(ConfigError, match=r"'network_dim' belongs in \[network\]"):
        _build({"train": {"network_dim": 8}})


def test_out_of_range_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"train\.learning_rate = -1"):
        _build({"train": {"learning_rate": -1}})
    with pytest.raises(ConfigError, match=r"network\.network_dim"):
        _build({"network": {"network_dim": 0}})


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"missing required key 'data'"):
        build_config({"model": {"pretrained_model": "x"}})


@pytest.mark.parametrize("value,expected", [("512,512", (512, 512)), ("768", (768, 768)),
                                            (640, (640, 640)), ([512, 768], (512, 768))])
def test_resolution_forms(value, expected) -> None:
    assert _build({"data": {"resolution": value}}).data.resolution == expected


def test_bad_resolution() -> None:
    with pytest.raises(ConfigError, match="resolution"):
        _build({"data": {"resolution": "512,abc"}})


def test_flat_kohya_keys_are_routed() -> None:
    cfg = _build({"unet_lr": 3e-4, "network_dim": 16})
    assert cfg.train.unet_lr == 3e-4 and cfg.network.network_dim == 16


def test_preset_then_file_then_override() -> None:
    cfg = _build({"preset": "kohya-character", "train": {"unet_lr": 2e-4}}, ["train.seed=7"])
    assert cfg.train.optimizer_type == "AdamW8bit"  # preset
    assert cfg.train.lr_scheduler == "polynomial"
    assert cfg.network.network_dim == 128 and cfg.network.network_alpha == 128
    assert cfg.train.text_encoder_lr == 5e-5 and cfg.train.max_train_epochs == 5
    assert cfg.train.unet_lr == 2e-4  # file wins over preset
    assert cfg.train.seed == 7  # override wins over all


def test_unknown_preset_lists_valid() -> None:
    with pytest.raises(ConfigError, match="kohya-character"):
        _build({"preset": "nope"})


def test_override_parsing() -> None:
    assert parse_override("train.unet_lr=2e-4") == (["train", "unet_lr"], 2e-4)
    assert parse_override("model.vae=/x/y") == (["model", "vae"], "/x/y")
    assert parse_override('data.resolution="768,768"') == (["data", "resolution"], "768,768")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.unet_lr")


def test_override_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unet_lrr"):
        _build(overrides=["train.unet_lrr=1"])


def test_relative_paths_resolve_against_file(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        '[model]\npretrained_model = "models/base"\n[data]\ntrain_data_dir = "train"\n'
        '[output]\noutput_dir = "out/v1"\n', encoding="utf-8")
    cfg = load_config(tmp_path / "run.toml")
    assert cfg.data.train_data_dir == str(tmp_path / "train")
    assert cfg.output.output_dir == str(tmp_path / "out" / "v1")


def test_hub_id_is_not_made_a_path(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        '[model]\npretrained_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"\n'
        '[data]\ntrain_data_dir = "train"\n', encoding="utf-8")
    assert load_config(tmp_path / "run.toml").model.pretrained_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)


def test_cache_latents_with_flip_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cache_latents"):
        _build({"data": {"random_crop": True}})


def test_dump_roundtrip(tmp_path: Path) -> None:
    cfg = _build({"train": {"optimizer_args": ["decouple=True"]}})
    (tmp_path / "again.toml").write_text(dump_config(cfg), encoding="utf-8")
    again = load_config(tmp_path / "again.toml")
    assert again == cfg


def test_every_field_documented() -> None:
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            assert field.description, f"{section}.{name} has no description"
    text = render_markdown()
    assert "| `unet_lr` |" in text and "## [train]" in text


def test_docs_file_is_current() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text(encoding="utf-8") == render_markdown(), "run: lorakiln config doc --output docs/config.md"


def test_quickstart_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "config.toml")
    assert cfg.model.pretrained_model == "tiny:sd1"


@pytest.mark.parametrize("name", ["kohya-character", "dadaptation", "adafactor", "pivotal-prodigy"])
def test_every_preset_validates(name: str) -> None:
    from lorakiln.config.presets import PRESET_DESCRIPTIONS, PRESETS

    cfg = _build({"preset": name})
    assert name in PRESETS and name in PRESET_DESCRIPTIONS
    if name == "pivotal-prodigy":  # the diffusers advanced SDXL recipe
        t = cfg.train
        assert (t.optimizer_type, t.learning_rate, t.adam_beta2, t.adam_weight_decay) == ("Prodigy", 1.0, 0.99, 0.01)
        assert t.prodigy_safeguard_warmup and t.prodigy_use_bias_correction and t.min_snr_gamma == 5.0
        assert cfg.pivotal.train_text_encoder_ti and cfg.network.network_dim == 32
