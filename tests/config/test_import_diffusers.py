"""`lorakiln config import` of diffusers training command lines.

The two Huggy fixtures are verbatim from the Hugging Face blog "LoRA training scripts of the world,
unite!" (the SNR comparison's arguments with `--optimizer="adamw"`, and the AdamW-vs-Prodigy
"all other training parameters" block), including their shell quirks.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lorakiln.config.importers import ImportResult, import_config
from lorakiln.config.importers.cmdline import parse_command
from lorakiln.config.load import build_config

FIXTURES = Path(__file__).parent / "fixtures"


def _import(text: str, tmp_path: Path, **kw) -> ImportResult:
    return import_config(text, fmt=kw.pop("fmt", "auto"), base_dir=tmp_path, **kw)


def _built(result: ImportResult, tmp_path: Path):
    """The emitted TOML, read back the way `lorakiln train` reads it."""
    assert result.problem is None, result.problem
    return build_config(tomllib.loads(result.text), base_dir=tmp_path)


def _accounted(result: ImportResult) -> str:
    d = result.draft
    return " ".join([*d.origins.values(), *(e.option for e in d.unmapped + d.notes), *d.inactive])


def test_huggy_adamw_command(tmp_path: Path) -> None:
    result = _import((FIXTURES / "huggy_adamw.sh").read_text(), tmp_path)
    cfg = _built(result, tmp_path)
    assert result.fmt == "diffusers"
    assert cfg.model.pretrained_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert cfg.model.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert cfg.data.train_data_dir == str(tmp_path / "huggy_clean")  # a local --dataset_name
    assert cfg.data.dataset_name is None
    assert (cfg.data.instance_prompt, cfg.data.caption_column, cfg.data.repeats) == ("a TOK emoji", "prompt", 1)
    assert cfg.data.resolution == (1024, 1024)
    t = cfg.train
    assert (t.train_batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing) == (4, 1, True)
    assert (t.learning_rate, t.unet_lr, t.text_encoder_lr) == (1e-4, 1e-4, 3e-4)
    assert (t.optimizer_type, t.lr_scheduler, t.lr_warmup_steps) == ("AdamW", "constant", 0)
    assert (t.max_train_steps, t.seed, t.mixed_precision) == (1000, 0, "bf16")
    assert t.adam_weight_decay == 1e-4  # the script's default, not torch's 1e-2
    assert (cfg.network.network_dim, cfg.network.network_alpha) == (32, 32)
    assert cfg.network.network_train_unet_only is True
    assert cfg.pivotal.train_text_encoder_ti is True
    assert cfg.validation.validation_prompt == ["a TOK emoji dressed as Yoda"]
    assert cfg.validation.validation_epochs == 50
    assert cfg.output.output_name == "lora-dreambooth-model"  # the script's default --output_dir
    assert (cfg.output.save_every_n_steps, cfg.output.save_state, cfg.output.save_diffusers) == (2000, True, True)
    assert [e.option for e in result.draft.unmapped] == ["--report_to=wandb"]
    assert "--report_to=wandb: logging-service only" in result.text
    # As pasted, bash would glue `--instance_prompt="a TOK emoji"\` and the next line together.
    assert any("--instance_prompt+--validation_prompt+--caption_column" in w for w in result.draft.warnings)


def test_huggy_shared_params_command(tmp_path: Path) -> None:
    result = _import((FIXTURES / "huggy_shared_params.sh").read_text(), tmp_path)
    cfg = _built(result, tmp_path)
    assert (cfg.output.output_dir, cfg.output.output_name) == (str(tmp_path / "huggy_v11"), "huggy_v11")
    assert cfg.train.min_snr_gamma == 5.0
    assert cfg.train.optimizer_type == "AdamW"  # no --optimizer: the script's adamW
    assert cfg.train.text_encoder_lr == 5e-6  # the script's default rate for the new embeddings
    assert cfg.train.learning_rate == 1e-4 and cfg.train.unet_lr is None
    assert [e.option for e in result.draft.unmapped] == ["--report_to=wandb"]
    assert not result.draft.warnings  # this block's lines are indented: nothing glued
    assert "output.output_dir = 'huggy_v11'" in " ".join(result.draft.header)  # relative paths, explained


@pytest.mark.parametrize("name", ["huggy_adamw.sh", "huggy_shared_params.sh"])
def test_every_flag_is_accounted_for(name: str, tmp_path: Path) -> None:
    text = (FIXTURES / name).read_text()
    result = _import(text, tmp_path)
    accounted = _accounted(result)
    for flag in parse_command(text).flags:
        assert f"--{flag.name}" in accounted, flag.name


def test_prodigy_pivotal_prior_recipe(tmp_path: Path) -> None:
    text = """accelerate launch train_dreambooth_lora_sdxl_advanced.py \\
      --pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0" \\
      --dataset_name="LinoyTsaban/3d_icon" --caption_column=prompt --instance_prompt="3d icon in the style of TOK" \\
      --optimizer="prodigy" --use_8bit_adam --learning_rate=1.0 --text_encoder_lr=1.0 \\
      --adam_beta1=0.9 --adam_beta2=0.99 --adam_weight_decay=0.01 --prodigy_decouple=False \\
      --train_text_encoder_ti --train_text_encoder_ti_frac=0.5 --token_abstraction="TOK" \\
      --num_new_tokens_per_abstraction=2 --adam_weight_decay_text_encoder=0.001 \\
      --with_prior_preservation --class_data_dir=./class --class_prompt="3d icon" --num_class_images=150 \\
      --prior_loss_weight=0.5 --push_to_hub --hub_token=hf_SECRET123 --random_flip --center_crop
    """
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path)
    t = cfg.train
    assert t.optimizer_type == "Prodigy" and (t.learning_rate, t.unet_lr, t.text_encoder_lr) == (1.0, 1.0, 1.0)
    assert (t.adam_beta1, t.adam_beta2, t.adam_weight_decay) == (0.9, 0.99, 0.01)
    assert (t.prodigy_safeguard_warmup, t.prodigy_use_bias_correction) == (True, True)  # script defaults
    assert t.prodigy_decouple is False
    assert cfg.data.dataset_name == "LinoyTsaban/3d_icon" and cfg.data.train_data_dir is None
    assert cfg.data.flip_aug is True
    p = cfg.pivotal
    assert (p.train_text_encoder_ti, p.train_text_encoder_ti_frac, p.token_abstraction) == (True, 0.5, "TOK")
    assert (p.num_new_tokens_per_abstraction, p.adam_weight_decay_text_encoder) == (2, 0.001)
    pr = cfg.prior
    assert pr.with_prior_preservation and pr.class_data_dir == str(tmp_path / "class")
    assert (pr.class_prompt, pr.num_class_images, pr.prior_loss_weight) == ("3d icon", 150, 0.5)
    notes = {e.option: e.reason for e in result.draft.notes}
    assert "ignored by the script" in notes["--use_8bit_adam"]
    assert "ran with True" in notes["--prodigy_decouple=False"]
    assert "centre-crops" in notes["--center_crop"]
    assert "SECRET123" not in result.text and "--hub_token=<redacted>" in result.text
    assert {e.option for e in result.draft.unmapped} == {"--push_to_hub", "--hub_token=<redacted>"}


def test_train_text_encoder_is_a_text_encoder_lora(tmp_path: Path) -> None:
    text = ("python train_dreambooth_lora_sdxl_advanced.py --pretrained_model_name_or_path=base "
            "--instance_data_dir=dog --instance_prompt='a photo of sks dog' --train_text_encoder "
            "--train_text_encoder_frac=0.8 --text_encoder_lr=5e-5 --rank=8")
    cfg = _built(_import(text, tmp_path), tmp_path)
    assert cfg.network.network_train_unet_only is False
    assert (cfg.train.train_text_encoder_frac, cfg.train.text_encoder_lr) == (0.8, 5e-5)
    assert cfg.data.caption_column == ""  # no --caption_column: --instance_prompt for every image


def test_exports_launcher_flags_and_output_paths(tmp_path: Path) -> None:
    text = """export MODEL_NAME="stabilityai/stable-diffusion-xl-base-1.0"
export OUTPUT_DIR=out/run1
accelerate launch --mixed_precision="fp16" --num_processes 1 train_dreambooth_lora_sdxl_advanced.py \\
  --pretrained_model_name_or_path=$MODEL_NAME --instance_data_dir="dog" \\
  --instance_prompt="a photo of sks dog" --output_dir=${OUTPUT_DIR} --logging_dir=tb --seed=7 \\
  --resume_from_checkpoint=latest --enable_xformers_memory_efficient_attention --frobnicate=3
"""
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path)
    assert cfg.model.pretrained_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert cfg.train.mixed_precision == "fp16"  # from accelerate launch
    assert cfg.output.output_name == "run1"
    assert cfg.output.logging_dir == str(tmp_path / "out" / "run1" / "tb")
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "not an option" in unmapped["--frobnicate=3"]
    assert "train.resume" in unmapped["--resume_from_checkpoint=latest"]
    notes = {e.option for e in result.draft.notes}
    assert "accelerate launch --num_processes=1" in notes
    assert "--enable_xformers_memory_efficient_attention" in notes
    assert (cfg.train.lr_warmup_steps, cfg.train.train_batch_size, cfg.network.network_dim) == (500, 4, 4)


def test_other_scripts_get_their_flags_only(tmp_path: Path) -> None:
    text = ("accelerate launch train_text_to_image_lora.py --pretrained_model_name_or_path=base "
            "--train_data_dir=pokemon --caption_column=text --rank=16 --image_column=img")
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path)
    assert cfg.data.resolution == (512, 512) and cfg.train.lr_warmup_steps == 0  # lorakiln's defaults
    assert "defaults of train_text_to_image_lora.py are not known" in result.text
    assert "first column" in {e.option: e.reason for e in result.draft.unmapped}["--image_column=img"]


def test_missing_base_model_is_reported_not_invented(tmp_path: Path) -> None:
    result = _import("--instance_data_dir=dog --instance_prompt=sks --rank=4", tmp_path, fmt="diffusers")
    assert result.problem is not None and "pretrained_model" in result.problem
    assert "Does not validate yet" in result.text


def test_prodigy_text_encoder_rate_follows_the_script(tmp_path: Path) -> None:
    base = ("--pretrained_model_name_or_path=base --instance_data_dir=dog --instance_prompt=sks "
            "--optimizer=prodigy --learning_rate=1.0 --text_encoder_lr=0.5 --report_to=tensorboard ")
    cfg = _built(_import(base + "--train_text_encoder", tmp_path, fmt="diffusers"), tmp_path)
    assert cfg.train.text_encoder_lr == 1.0  # the script gives Prodigy one rate: --learning_rate
    result = _import(base + "--train_text_encoder_ti", tmp_path, fmt="diffusers")
    notes = {e.option: e.reason for e in result.draft.notes}
    assert "one learning rate" in notes["--text_encoder_lr=0.5"]
    assert "TensorBoard" in notes["--report_to=tensorboard"] and not result.draft.unmapped
