"""Pretrain the toy base model from scratch, with lorakiln's own trainer.

`lorakiln toy pretrain --out DIR` reproduces the shipped weights:

1. render the world's training split (`world.py`, held-out pairs and the "zwx" concept excluded)
   upright as an ImageFolder (`metadata.jsonl`); a share of captions omit the background so
   short prompts ("a red circle") work too;
2. train the KL-VAE (`vae.py`) — the one part an SD trainer never trains — on the same scenes
   freely rotated;
3. write the starting point (trained VAE, random U-Net and text encoder, the real CLIP
   tokenizer) as a diffusers folder (`model.py`);
4. train U-Net and text encoder together with `lorakiln train` in full mode (`train.mode =
   "full"`), EMA on, min-SNR weighting and 10 % caption dropout so classifier-free guidance works;
5. write the EMA weights as one SD-1.x single file (fp16) — the file `toy` resolves to.

Every step is seeded; the run config is written beside the outputs (`toy_config.toml`), and a
run cut short resumes from its state folder (`--resume`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainPlan:
    """The recipe; defaults are the shipped model's (about 1.5 h on two idle CPU cores: ≈30 min VAE, ≈60 min U-Net)."""

    images: int = 20_000
    seed: int = 0
    vae_steps: int = 4_000  # 1,500 capped the model at 69.5 % (vae.py, `reconstruction_accuracy`)
    vae_batch: int = 32
    steps: int = 6_000
    batch_size: int = 64
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    no_background_share: float = 0.3  # captions without "on a … background"
    save_every_n_steps: int = 1_000


def write_training_images(folder: Path, plan: PretrainPlan, log: Log | None = None) -> None:
    """The world's train split, upright, as an ImageFolder: the U-Net's training data."""
    from lorakiln.toyworld.render import render
    from lorakiln.toyworld.world import caption, sample_scenes

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(plan.seed + 17)
    rows = []
    for i, scene in enumerate(sample_scenes(plan.images, plan.seed, "train")):
        name = f"{i:05d}.png"
        render(scene, 64).save(folder / name, format="PNG")
        rows.append({"file_name": name, "prompt": caption(scene, with_background=rng.random() >= plan.no_background_share)})
        if log and (i + 1) % 5000 == 0:
            log(f"rendered {i + 1}/{plan.images}")
    # written last: its presence marks a complete folder (a resumed run skips this step)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def vae_training_arrays(plan: PretrainPlan) -> list[np.ndarray]:
    """The same scenes freely rotated, as pixel arrays: the VAE is a general image codec, so it
    learns from the more varied set (and reads every rotation back, `vae.reconstruction_accuracy`)."""
    from lorakiln.toyworld.render import render
    from lorakiln.toyworld.world import sample_scenes

    return [np.asarray(render(scene, 64)) for scene in sample_scenes(plan.images, plan.seed, "train", rotate=True)]


def run_config(work: Path, plan: PretrainPlan, *, resume: str | None = None) -> dict[str, Any]:
    """The `lorakiln train` config of step 4 (a plain dict, as read from TOML)."""
    cfg: dict[str, Any] = {
        "model": {"pretrained_model": str(work / "init")},
        "data": {"train_data_dir": str(work / "data"), "resolution": 64, "enable_bucket": False,
                 "cache_latents": True, "caption_dropout_rate": plan.caption_dropout, "check_images": False},
        "train": {"mode": "full", "train_batch_size": plan.batch_size, "max_train_steps": plan.steps,
                  "optimizer_type": "AdamW", "unet_lr": plan.learning_rate, "text_encoder_lr": plan.learning_rate,
                  "lr_scheduler": "cosine", "lr_warmup_steps": plan.warmup_steps, "max_grad_norm": 1.0,
                  "ema_decay": plan.ema_decay, "min_snr_gamma": 5.0, "seed": plan.seed,
                  "detect_anomaly_every": 50},
        "output": {"output_dir": str(work / "run"), "output_name": "toy", "save_every_n_steps": plan.save_every_n_steps,
                   "save_state": True, "save_precision": "float"},
        "validation": {"validation_prompt": ["a red circle on a grey background", "a blue star",
                                             "a yellow heart on a teal background", "a green triangle"],
                       "validation_steps": plan.save_every_n_steps, "validation_epochs": 10_000,
                       "num_validation_images": 2, "validation_inference_steps": 25,
                       "validation_resolution": 64, "sample_sampler": "DPM++ 2M", "final_grid": False},
    }
    if resume:
        cfg["train"]["resume"] = resume
    return cfg


def pretrain(work: str | Path, out: str | Path, plan: PretrainPlan = PretrainPlan(), *, resume: str | None = None,
             log: Log | None = print) -> Path:
    """Run all five steps in `work` and write the model to `out` (a `.safetensors` file)."""
    import torch

    from lorakiln.config.load import build_config
    from lorakiln.models.loading import load_base_model
    from lorakiln.models.save import save_bundle_single_file
    from lorakiln.toyworld.model import build_toy_vae, save_toy_init
    from lorakiln.toyworld.vae import reconstruction_accuracy, to_tensor, train_vae
    from lorakiln.training.loop import train

    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps(asdict(plan), indent=2), encoding="utf-8")
    started = time.time()
    if not (work / "data" / "metadata.jsonl").is_file():
        write_training_images(work / "data", plan, log)
    if not (work / "init" / "model_index.json").is_file():
        vae = build_toy_vae(plan.seed)
        report = train_vae(vae, to_tensor(vae_training_arrays(plan)), steps=plan.vae_steps, batch_size=plan.vae_batch,
                           seed=plan.seed, log=log)
        ceiling = reconstruction_accuracy(vae)
        (work / "vae_report.json").write_text(json.dumps(asdict(report) | {"reconstruction": ceiling}, indent=2),
                                              encoding="utf-8")
        if log:
            log(f"VAE: {report.steps} steps in {report.seconds:.0f} s, reconstruction PSNR {report.psnr:.1f} dB, "
                f"scaling factor {report.scaling_factor:.4f}; detectors on its reconstructions: shape "
                f"{ceiling['shape']:.1%}, colour {ceiling['colour']:.1%}, both {ceiling['both']:.1%} "
                "(the ceiling of the base model's accuracy)")
        save_toy_init(str(work / "init"), vae, plan.seed)
    cfg = build_config(run_config(work, plan, resume=resume), source="toy pretraining")
    result = train(cfg, progress=log is not None)
    bundle = load_base_model(str(result.lora_path))
    save_bundle_single_file(bundle, out, dtype=torch.float16,
                            metadata={"lorakiln_toy_plan": json.dumps(asdict(plan))})
    if log:
        log(f"toy model written to {out} after {(time.time() - started) / 60:.1f} min")
    return out
