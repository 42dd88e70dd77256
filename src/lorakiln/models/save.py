"""Write a whole model (`ModelBundle`) back out: single file and diffusers folder.

Used by full fine-tuning and pretraining (`train.mode = "full"`). The single file is what
AUTOMATIC1111, Forge and ComfyUI load from `models/Stable-diffusion` / `models/checkpoints`
(LDM layout for SD 1.x, SGM for SDXL: `ldm_export.py`); the diffusers folder is what
`from_pretrained` loads. Both load back through lorakiln's own loaders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lorakiln.atomic import temp_folder_beside
from lorakiln.models.clip_tokenizer import CLIP_VOCAB_SIZE


def _tokenizer_name(bundle: Any) -> str | None:
    """Single files carry no tokenizer: mark models whose tokenizer is lorakiln's tiny one (loaders
    then rebuild it); a CLIP-vocabulary model uses the bundled CLIP tokenizer."""
    from lorakiln.models.tiny import TINY_TOKENIZER_NAME

    return TINY_TOKENIZER_NAME if len(bundle.tokenizers[0]) != CLIP_VOCAB_SIZE else None


def save_bundle_single_file(bundle: Any, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
                            metadata: dict[str, str] | None = None) -> Path:
    """The model as one `.safetensors` in its family's single-file layout (atomic)."""
    from lorakiln.models.ldm_export import save_single_file

    return save_single_file(path, bundle.family, bundle.unet, bundle.vae, list(bundle.text_encoders),
                            scheduler=bundle.noise_scheduler, dtype=dtype, tokenizer_name=_tokenizer_name(bundle),
                            metadata=metadata)


def save_bundle_diffusers(bundle: Any, folder: str | os.PathLike[str]) -> Path:
    """The model as a diffusers folder (`model_index.json` layout), written to a temporary folder
    and renamed into place so an interrupted save never leaves half a model."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    if bundle.family.uses_time_ids:
        pipe = StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                         text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=bundle.unet,
                                         scheduler=bundle.noise_scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                       tokenizer=bundle.tokenizers[0], unet=bundle.unet,
                                       scheduler=bundle.noise_scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder_beside(folder)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():  # replace the previous save: move it aside first, drop it after
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
