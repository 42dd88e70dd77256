"""`lorakiln config import` on a corpus of configs in the formats other trainers write.

The fixtures in `tests/fixtures/import-corpus/` are our own files written the way each tool
writes them: kohya_ss GUI "Save config" JSON (sorted keys, numbers partly as strings, "" for
unset, every form field) for LoRA, LoCon, LoHa, LoKr, iA3, SDXL and Flux.1; an sd-scripts
`--config_file` TOML (sections as `--output_config` writes them) with `network_args` and a
`dataset_config` reference; sd-scripts dataset configs (`[general]`, `[[datasets]]`,
`[[datasets.subsets]]`, as its docs' config_README); the sd-scripts docs' command written one
option per line without `\\`; and two commands from the diffusers advanced_diffusion_training
README (the 3D-icon pivotal-tuning run and the B-LoRA run). Each import is checked field by
field, then must pass `lorakiln train --dry-run` once the base model and the image folder are
set, as a user would set them.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lorakiln.cli import main
from lorakiln.config.importers import ImportResult, import_config
from lorakiln.config.load import load_config

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "import-corpus"


@dataclass(frozen=True)
class Case:
    """One fixture: the base model stand-in for the dry run and the fields that must come out."""

    fixture: str
    model: str
    expect: dict[str, Any]
    header: tuple[str, ...] = ()
    unmapped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: `--set` overrides the dry run needs besides the model and the folder.
    extra: tuple[str, ...] = field(default=())
    #: Keys removed before the dry run (a hub VAE needs network; the tiny model has its own).
    drop: tuple[str, ...] = field(default=())


CASES = [
    Case("kohya_gui_lora_sd15.json", "tiny:sd1", {
        "network.network_module": "lora", "network.network_dim": 32, "network.network_alpha": 16,
        "network.conv_dim": None, "train.optimizer_type": "AdamW8bit", "train.lr_scheduler": "cosine",
        "train.learning_rate": 1e-4, "train.unet_lr": 1e-4, "train.text_encoder_lr": 5e-5,
        "train.lr_warmup_steps": 0.05, "data.resolution": (512, 512), "train.train_batch_size": 2,
        "train.max_train_epochs": 10, "data.keep_tokens": 1, "data.shuffle_caption": True, "train.seed": 1234,
    }, header=("Windows paths are kept as written", "'E:\\\\froggy\\\\img'", "replace them")),
    Case("kohya_gui_locon_sd15.json", "tiny:sd1", {
        "network.network_module": "locon", "network.network_dim": 16, "network.network_alpha": 8,
        "network.conv_dim": 8, "network.conv_alpha": 4, "train.optimizer_type": "Prodigy",
        "train.optimizer_args": ["decouple=True", "weight_decay=0.01", "use_bias_correction=True"],
        "train.lr_scheduler": "constant", "train.learning_rate": 1.0, "train.unet_lr": 1.0,
        "train.text_encoder_lr": 1.0, "train.min_snr_gamma": 5, "train.train_batch_size": 2,
        "data.resolution": (512, 512), "train.max_train_epochs": 8,
    }),
    Case("kohya_gui_loha_sd15.json", "tiny:sd1", {
        "network.network_module": "loha", "network.network_dim": 32, "network.network_alpha": 16,
        "network.conv_dim": 8, "network.conv_alpha": 4, "network.use_tucker": True,
        "train.optimizer_type": "AdamW", "train.lr_scheduler": "cosine", "train.unet_lr": 1e-4,
        "train.gradient_accumulation_steps": 4, "train.min_snr_gamma": 10, "data.caption_extension": ".txt",
        "train.train_batch_size": 1, "data.resolution": (512, 512),
    }, header=('caption_extension = ".none-use-foldername" is the kohya_ss GUI\'s choice', "folder's <token>"),
        unmapped=("multires_noise_iterations = 8",)),
    Case("kohya_gui_lokr_sd15.json", "tiny:sd1", {
        "network.network_module": "lokr", "network.network_dim": 1024, "network.conv_dim": 1024,
        "network.network_alpha": 1, "network.lokr_factor": 6, "train.optimizer_type": "Prodigy",
        "train.optimizer_args": ["d_coef=1.0", "weight_decay=0.4", "decouple=True", "safeguard_warmup=True",
                                 "use_bias_correction=True"],
        "train.lr_scheduler": "cosine", "train.learning_rate": 1.0, "train.train_batch_size": 2,
        "train.max_train_epochs": 150, "data.caption_dropout_rate": 0.1,
    }, unmapped=("additional_parameters: --lr_scheduler_type=CosineAnnealingLR",)),
    Case("kohya_gui_ia3_sd15.json", "tiny:sd1", {
        "network.network_module": "lora", "train.optimizer_type": "Prodigy", "train.learning_rate": 1.0,
        "train.lr_scheduler": "cosine", "train.max_train_epochs": 4,
    }, header=("Adapter not imported: the source trains iA3",),
        unmapped=('LoRA_type = "LyCORIS/iA3" (the GUI runs lycoris.kohya algo=ia3)', "conv_dim = 64")),
    Case("kohya_gui_lora_sdxl.json", "tiny:sdxl", {
        "network.network_module": "lora", "network.network_dim": 32, "network.network_alpha": 32,
        "network.network_train_unet_only": True, "train.optimizer_type": "Adafactor",
        "train.optimizer_args": ["scale_parameter=False", "relative_step=False", "warmup_init=False"],
        "train.lr_scheduler": "constant_with_warmup", "train.lr_warmup_steps": 0.1, "train.learning_rate": 3e-4,
        "train.unet_lr": 3e-4, "data.resolution": (1024, 1024), "data.bucket_reso_steps": 32,
        "train.train_batch_size": 4, "train.max_train_epochs": 20, "train.noise_offset": 0.0357,
    }),
    Case("sd_scripts_config.toml", "tiny:sd1", {
        "network.network_module": "locon", "network.dora_wd": True, "network.network_dim": 16,
        "network.network_alpha": 8, "network.conv_dim": 8, "network.conv_alpha": 4,
        "train.optimizer_type": "AdamW8bit", "train.lr_scheduler": "cosine_with_restarts",
        "train.lr_scheduler_num_cycles": 3, "train.unet_lr": 2e-4, "train.text_encoder_lr": 1e-4,
        "train.max_train_epochs": 10,
        # from the dataset config it names, which wins over the config file, as in sd-scripts
        "data.resolution": (768, 768), "train.train_batch_size": 4, "data.min_bucket_reso": 384,
        "data.max_bucket_reso": 1280, "data.enable_bucket": True, "data.shuffle_caption": True,
        "data.keep_tokens": 1, "data.caption_extension": ".txt", "prior.with_prior_preservation": True,
    }),
    Case("sd_scripts_docs_command.txt", "tiny:sd1", {
        "network.network_module": "lora", "network.network_dim": 16, "network.conv_dim": 4,
        "network.conv_alpha": 1, "train.optimizer_type": "AdamW8bit", "train.learning_rate": 1e-4,
        "train.max_train_steps": 400, "train.mixed_precision": "fp16", "train.gradient_checkpointing": True,
        "output.save_every_n_epochs": 1, "output.output_name": "zwx", "prior.prior_loss_weight": 1.0,
        "data.resolution": (768, 768), "train.train_batch_size": 4, "train.lr_scheduler": "constant",
    }, warnings=("17 line(s) starting with `--`",)),
    Case("diffusers_3d_icon.sh", "tiny:sdxl", {
        "network.network_module": "lora", "network.network_dim": 8, "network.network_alpha": 8,
        "train.optimizer_type": "Prodigy", "train.learning_rate": 1.0, "train.text_encoder_lr": 1.0,
        "train.lr_scheduler": "constant", "train.min_snr_gamma": 5, "train.max_train_steps": 1000,
        "train.train_batch_size": 3, "data.resolution": (1024, 1024), "data.repeats": 1,
        "pivotal.train_text_encoder_ti": True, "data.instance_prompt": "3d icon in the style of TOK",
    }, unmapped=("--report_to=wandb", "--push_to_hub"), drop=("model.vae",)),  # a hub VAE
    Case("diffusers_blora.sh", "tiny:sdxl", {
        "network.network_module": "lora", "network.network_dim": 64, "train.learning_rate": 5e-5,
        "train.lr_scheduler": "constant", "train.max_train_steps": 800, "train.train_batch_size": 1,
        "data.resolution": (1024, 1024), "train.mixed_precision": "fp16", "train.optimizer_type": "AdamW",
    }, header=("Not reproduced: B-LoRA", "Hugging Face Hub id", "data.dataset_name"),
        unmapped=("(fixed in train_dreambooth_b-lora_sdxl.py) LoRA on up_blocks.0.attentions.0",),
        extra=("data.dataset_name=\"\"",)),
]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A tiny kohya folder: `train/5_zwx/` with two small PNGs."""
    from PIL import Image

    folder = tmp_path / "train" / "5_zwx"
    folder.mkdir(parents=True)
    for i, colour in enumerate([(200, 60, 60), (60, 90, 200)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
    return folder.parent


def _header(text: str) -> str:
    """The comments above the first table, as one line of words (the file wraps them)."""
    lines = text.split("\n[", 1)[0].splitlines()
    return " ".join(" ".join(line.lstrip("#").split()) for line in lines)


def _value(cfg: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.fixture)
def test_corpus_imports_and_dry_runs(case: Case, tmp_path: Path, images: Path, capsys) -> None:
    out = tmp_path / "run" / "run.toml"
    out.parent.mkdir()
    assert main(["config", "import", str(CORPUS / case.fixture), "-o", str(out)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    text = out.read_text(encoding="utf-8")
    cfg = load_config(out)
    for dotted, expected in case.expect.items():
        got = _value(cfg, dotted)
        assert got == (pytest.approx(expected) if isinstance(expected, float) else expected), (dotted, got)
    header = _header(text)
    for words in case.header:
        assert words in header, words
    for option in case.unmapped:
        assert any(line.startswith(f"  not imported: {option}") for line in captured.out.splitlines()), option
    for words in case.warnings:
        assert words in captured.err, words
    if case.drop:
        raw = tomllib.loads(text)
        for dotted in case.drop:
            section, key = dotted.split(".")
            del raw[section][key]
        out.write_text(tomli_w.dumps(raw), encoding="utf-8")
    sets = [f"model.pretrained_model={case.model}", f"data.train_data_dir={images}", *case.extra]
    argv = ["train", str(out), "--dry-run"] + [arg for s in sets for arg in ("--set", s)]
    assert main(argv) == 0, capsys.readouterr().err


def test_flux_preset_is_refused_naming_the_family(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run.toml"
    assert main(["config", "import", str(CORPUS / "kohya_gui_flux1.json"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Flux.1" in err and "flux1_checkbox = true" in err and not out.exists()


@pytest.mark.parametrize(("text", "family"), [
    ("accelerate launch flux_train_network.py --pretrained_model_name_or_path=flux1-dev.safetensors "
     "--network_module=networks.lora_flux --network_dim=4", "Flux.1"),
    ("accelerate launch sd3_train_network.py --pretrained_model_name_or_path=sd3.5_large.safetensors", "Stable Diffusion 3"),
    ("accelerate launch train_dreambooth_lora_flux.py --pretrained_model_name_or_path=black-forest-labs/FLUX.1-dev "
     "--instance_data_dir=dog --instance_prompt=sks", "Flux.1"),
    ("accelerate launch train_dreambooth_lora.py --pretrained_model_name_or_path=stabilityai/stable-diffusion-2-1 "
     "--instance_data_dir=dog --instance_prompt=sks", "Stable Diffusion 2.x"),
    ("accelerate launch wan_train_network.py --dit=wan2.1_t2v_14B_bf16.safetensors --network_dim=32", "Wan"),
    ("python train_cogvideox_lora.py --pretrained_model_name_or_path=THUDM/CogVideoX-2b --rank=64", "CogVideoX"),
    ('pretrained_model_name_or_path = "sd15.safetensors"\nnetwork_module = "networks.lora_sd3"\n', "Stable Diffusion 3"),
    (json.dumps({"LoRA_type": "Standard", "sd3_checkbox": True, "train_data_dir": "x"}), "Stable Diffusion 3"),
    (json.dumps({"LoRA_type": "Standard", "v2": True, "train_data_dir": "x"}), "Stable Diffusion 2.x"),
])
def test_other_model_families_are_refused(text: str, family: str, tmp_path: Path, capsys) -> None:
    source = tmp_path / ("cfg.json" if text.startswith("{") else "cfg.toml" if "\n" in text else "cmd.sh")
    source.write_text(text, encoding="utf-8")
    assert main(["config", "import", str(source)]) == 2
    err = capsys.readouterr().err
    assert family in err and "lorakiln trains Stable Diffusion 1.x and SDXL only" in err


def _import(text: str, tmp_path: Path, fmt: str = "auto") -> ImportResult:
    return import_config(text, fmt=fmt, base_dir=tmp_path)


def test_sdxl_lora_and_sd15_models_are_not_mistaken_for_other_families(tmp_path: Path) -> None:
    for model in ("stabilityai/stable-diffusion-xl-base-1.0", "models/v1-5-pruned-emaonly.safetensors",
                  "E:\\models\\sd_xl_base_1.0.safetensors", "runwayml/stable-diffusion-v1-5"):
        result = _import(f"--pretrained_model_name_or_path={model} --train_data_dir=t --network_module=networks.lora",
                         tmp_path, "sd-scripts")
        assert result.problem is None, (model, result.problem)
