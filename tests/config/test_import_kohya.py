"""`lorakiln config import` of kohya_ss GUI JSON and sd-scripts TOMLs / command lines.

`fixtures/kohya_gui_seed000.json` is the GUI config for the kohya_ss community table (batch 1,
5 epochs, TE 5e-5, U-Net 1e-4, polynomial, AdamW8bit, dim/alpha 128), with the field names and
value types the kohya_ss GUI writes (numbers as strings, "" for unset, every LyCORIS knob).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from lorakiln.config.importers import ImportResult, import_config
from lorakiln.config.load import build_config

FIXTURES = Path(__file__).parent / "fixtures"
SEED000 = json.loads((FIXTURES / "kohya_gui_seed000.json").read_text())


def _import(text: str, tmp_path: Path, fmt: str = "auto") -> ImportResult:
    return import_config(text, fmt=fmt, base_dir=tmp_path)


def _built(result: ImportResult, tmp_path: Path):
    assert result.problem is None, result.problem
    return build_config(tomllib.loads(result.text), base_dir=tmp_path)


def _gui(tmp_path: Path, **changes) -> ImportResult:
    return _import(json.dumps({**SEED000, **changes}), tmp_path)


def test_seed000_gui_config(tmp_path: Path) -> None:
    result = _import((FIXTURES / "kohya_gui_seed000.json").read_text(), tmp_path)
    cfg = _built(result, tmp_path)
    assert result.fmt == "kohya-gui"
    t = cfg.train
    assert (t.train_batch_size, t.max_train_epochs, t.text_encoder_lr, t.unet_lr) == (1, 5, 5e-5, 1e-4)
    assert (t.lr_scheduler, t.optimizer_type, t.lr_warmup_steps, t.seed) == ("polynomial", "AdamW8bit", 0.1, 1234)
    assert (cfg.network.network_dim, cfg.network.network_alpha, cfg.network.network_module) == (128, 128, "lora")
    assert (cfg.data.resolution, cfg.data.caption_extension, cfg.data.keep_tokens) == ((512, 512), ".txt", 0)
    assert (cfg.data.enable_bucket, cfg.data.max_bucket_reso, cfg.data.bucket_no_upscale) == (True, 2048, True)
    assert (cfg.output.output_name, cfg.output.save_every_n_epochs, cfg.output.save_precision) == ("last", 1, "fp16")
    assert cfg.output.logging_dir == "/home/user/lora/logs"
    assert result.draft.unmapped == []
    assert {e.option for e in result.draft.notes} == {'xformers = "xformers"', "num_cpu_threads_per_process = 2"}


def test_every_gui_field_is_accounted_for(tmp_path: Path) -> None:
    d = _import((FIXTURES / "kohya_gui_seed000.json").read_text(), tmp_path).draft
    words = " ".join([*d.origins.values(), *(e.option for e in d.unmapped + d.notes), *d.inactive]).split()
    for key in SEED000:
        assert key in words, key


def test_gui_rules(tmp_path: Path) -> None:
    result = _gui(tmp_path, text_encoder_lr=0, caption_extension="", lr_warmup=100, lr_scheduler="cosine_with_restarts",
                  stop_text_encoder_training=50, reg_data_dir="", color_aug=True, max_train_epochs="8",
                  sample_prompts="photo of zwx --n blurry --s 20 --l 6 --w 512 --h 768\nzwx on a beach",
                  sample_every_n_epochs=2, use_wandb=True, wandb_api_key="k-SECRET",
                  additional_parameters="--max_token_length=225 --zero_terminal_snr")
    cfg = _built(result, tmp_path)
    assert cfg.network.network_train_unet_only is True  # TE lr 0: the GUI trains the U-Net only
    assert cfg.data.caption_extension == ".caption"  # empty field: sd-scripts' default
    assert cfg.train.lr_warmup_steps == 0.999  # 100 % of the run, still a fraction for lorakiln
    assert cfg.train.lr_scheduler_num_cycles == 5  # the GUI's default: one restart per epoch
    assert cfg.train.max_train_epochs == 8  # max_train_epochs wins over epoch
    assert cfg.train.train_text_encoder_frac == 0.5
    v = cfg.validation
    assert v.validation_prompt == ["photo of zwx", "zwx on a beach"] and v.num_validation_images == 1
    assert (v.validation_negative_prompt, v.validation_inference_steps, v.validation_guidance_scale) == ("blurry", 20, 6)
    assert (v.validation_resolution, v.validation_epochs) == ((512, 768), 2)
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "colour augmentation" in unmapped["color_aug = true"]
    assert "75 tokens" in unmapped["additional_parameters: --max_token_length=225"]
    assert "additional_parameters: --zero_terminal_snr" in unmapped
    assert "use_wandb = true" in unmapped and "SECRET" not in result.text
    notes = {e.option: e.reason for e in result.draft.notes}
    assert ".caption" in notes['caption_extension = ""'] and "first prompt's" in notes["sample_prompts = " + json.dumps(
        "photo of zwx --n blurry --s 20 --l 6 --w 512 --h 768\nzwx on a beach")]


def test_gui_lycoris_types_are_trained_as_the_gui_runs_them(tmp_path: Path) -> None:
    """LoHa is what the GUI passes to sd-scripts (lycoris.kohya algo=loha with its conv knobs),
    the same as the sd-scripts importer reads; the GUI's other rules keep applying."""
    result = _gui(tmp_path, LoRA_type="LyCORIS/LoHa", conv_dim=8, noise_offset_type="Multires",
                  multires_noise_iterations=6, unet_lr=0, text_encoder_lr=1e-5, bucket_reso_steps=1)
    cfg = _built(result, tmp_path)
    net = cfg.network
    assert (net.network_module, net.conv_dim, net.conv_alpha) == ("loha", 8, 1)  # the GUI passes conv_alpha too
    assert cfg.data.bucket_reso_steps == 64
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert not any("LoRA_type" in o or "conv_dim" in o for o in unmapped)
    assert "LyCORIS is not supported" not in result.text and "plain LoRA" not in result.text
    assert "offset noise" in unmapped["multires_noise_iterations = 6"]
    assert "alone is not supported" in next(r for o, r in unmapped.items() if o.startswith("unet_lr"))
    assert "greater than or equal to 8" in unmapped["bucket_reso_steps = 1"]
    assert "factor" in result.draft.inactive  # LoKr's knob, not passed for LoHa: nothing to report


def test_gui_knob_the_type_does_not_pass_is_noted(tmp_path: Path) -> None:
    result = _gui(tmp_path, LoRA_type="Standard", conv_dim=16, factor=4)
    cfg = _built(result, tmp_path)
    assert (cfg.network.network_module, cfg.network.conv_dim) == ("lora", None)
    notes = {e.option: e.reason for e in result.draft.notes}
    assert "does not pass it" in notes["conv_dim = 16"] and "does not pass it" in notes["factor = 4"]


def test_sd_scripts_sectioned_toml(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("# samples\nzwx, a man --n lowres --s 30\n", encoding="utf-8")
    reg = tmp_path / "reg" / "1_man"
    reg.mkdir(parents=True)
    for i in range(3):
        (reg / f"{i}.png").write_bytes(b"")
    text = """
[model_arguments]
pretrained_model_name_or_path = "models/sd15.safetensors"
v2 = false
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=4"]
unet_lr = 1e-4
text_encoder_lr = 5e-5
[optimizer_arguments]
optimizer_type = "adamw8bit"
optimizer_args = ["weight_decay=0.1"]
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.05
[dataset_arguments]
train_data_dir = "train"
reg_data_dir = "reg"
resolution = "768,768"
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
[training_arguments]
max_train_epochs = 10
max_train_steps = 2000
train_batch_size = 2
mixed_precision = "fp16"
xformers = true
prior_loss_weight = 0.8
log_with = "wandb"
wandb_api_key = "abc-SECRET"
[sample_prompt_arguments]
sample_prompts = "prompts.txt"
sample_every_n_epochs = 1
sample_sampler = "euler_a"
[saving_arguments]
output_dir = "out"
output_name = "zwx"
save_every_n_epochs = 2
save_model_as = "safetensors"
"""
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path)
    assert result.fmt == "sd-scripts"
    t = cfg.train
    assert (t.optimizer_type, t.optimizer_args, t.lr_scheduler_num_cycles) == ("AdamW8bit", ["weight_decay=0.1"], 3)
    assert (t.max_train_epochs, t.max_train_steps) == (10, None)  # sd-scripts: epochs override steps
    assert cfg.data.enable_bucket is False  # absent: sd-scripts' default, unlike lorakiln's
    assert (cfg.network.network_dim, cfg.network.network_alpha) == (32, 16)
    p = cfg.prior
    assert (p.with_prior_preservation, p.num_class_images, p.prior_loss_weight) == (True, 3, 0.8)
    assert cfg.validation.validation_prompt == ["zwx, a man"]
    assert cfg.validation.validation_negative_prompt == "lowres"
    assert cfg.validation.sample_sampler == "euler_a"  # sd-scripts' name, accepted by the generator
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert cfg.network.conv_dim == 4 and "network_args: conv_dim=4" not in unmapped  # kohya LoCon
    assert 'log_with = "wandb"' in unmapped and "wandb_api_key = <redacted>" in unmapped
    assert "SECRET" not in result.text
    assert "save_model_as" in result.draft.inactive and "v2" in result.draft.inactive


def test_sd_scripts_command_line(tmp_path: Path) -> None:
    text = """accelerate launch --num_cpu_threads_per_process 1 sdxl_train_network.py \\
      --pretrained_model_name_or_path=sdxl.safetensors --train_data_dir=train --output_dir=out \\
      --network_module=lycoris.kohya --network_dim 16 --optimizer_type PagedAdamW8bit \\
      --optimizer_args "weight_decay=0.1" "betas=0.9,0.99" --resolution=1024 --enable_bucket"""
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path)
    assert result.fmt == "sd-scripts"
    assert cfg.train.optimizer_args == ["weight_decay=0.1", "betas=0.9,0.99"]
    assert cfg.train.optimizer_type == "AdamW" and cfg.train.max_train_steps == 1600  # sd-scripts default
    assert (cfg.data.caption_extension, cfg.output.save_precision) == (".caption", "float")
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "Valid optimizers" in unmapped["--optimizer_type=PagedAdamW8bit"]
    assert cfg.network.network_module == "locon"  # lycoris.kohya's default algo=lora is LoCon


def test_lorakiln_config_is_not_imported(tmp_path: Path) -> None:
    import pytest

    from lorakiln.errors import ConfigError

    with pytest.raises(ConfigError, match="already a lorakiln run config"):
        _import('[model]\npretrained_model = "x"\n[data]\ntrain_data_dir = "t"\n', tmp_path)


def test_gui_steps_set_means_epoch_unused(tmp_path: Path) -> None:
    result = _gui(tmp_path, max_train_steps="1875")
    cfg = _built(result, tmp_path)
    assert (cfg.train.max_train_steps, cfg.train.max_train_epochs) == (1875, 1)
    assert "max_train_steps is set" in {e.option: e.reason for e in result.draft.notes}["epoch = 5"]
