"""Tiny kohya/LyCORIS LoRA files with random (trained-looking) factors, and the model outputs the
merge tests compare: shared by test_merge_lora.py and test_merge_checkpoint.py (a uniquely named
module, as pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lorakiln.inference.pipeline import build_pipeline
from lorakiln.inference.weighting import encode_prompt
from lorakiln.models.family import SD1, ModelFamily
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.lora import delta_weight
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

STD = {"lora": 0.1, "locon": 0.1, "loha": 0.5, "lokr": 0.3}


def save_lora(path: Path, family: ModelFamily = SD1, *, algo: str = "lora", dim: int = 4, alpha: float = 2.0,
              seed: int = 1, **kw: Any) -> Path:
    """A kohya/LyCORIS file whose every factor is random (trained-looking: non-zero deltas)."""
    bundle = (build_tiny_sd1_bundle if family is SD1 else build_tiny_sdxl_bundle)(seed=0)
    torch.manual_seed(seed)
    net = create_lora_network(bundle.unet, bundle.text_encoders, family, dim=dim, alpha=alpha, algo=algo, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in net.loras():
            for name, p in module.named_parameters():
                if name != "dora_scale":  # DoRA magnitudes stay ‖W‖; the direction carries the change
                    p.copy_(torch.randn(p.shape, generator=gen) * STD[algo])
    save_kohya_lora(net, path, build_metadata(TrainingInfo(output_name=path.stem), net), dtype="float")
    net.remove()
    return path


def kohya_deltas(path: Path) -> dict[str, torch.Tensor]:
    """ΔW = (alpha/rank)·up@down per module, straight from the file's tensors (kohya's scale)."""
    tensors = load_file(str(path))
    out = {}
    for key in {k.split(".")[0] for k in tensors}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        out[key] = delta_weight(up, down, float(tensors[f"{key}.alpha"]) / down.shape[0], (up.shape[0], -1))
    return out


def outputs(bundle: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(text-encoder conditioning, U-Net output) for a fixed prompt and latent."""
    hidden, pooled = encode_prompt(build_pipeline(bundle), bundle, "photo of zwx")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    extra = {}
    if bundle.family.uses_time_ids:
        extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                      "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        return hidden, bundle.unet(x, torch.tensor([400]), hidden, **extra).sample
