"""Textual-inversion embeddings by file stem, with A1111 and ComfyUI semantics (formats.md §3, §4).

A1111 registers every file in the embeddings folder under its stem and replaces that word in the
prompt; lorakiln loads only the files whose stem appears in the prompt. Accepted layouts:
SDXL `clip_l` + `clip_g`, a single-key dict (`clip_l`, kohya `emb_params`, diffusers'
`{token: tensor}`), and A1111's `string_to_param` — in `.safetensors`; pickled `.pt`/`.bin`
embeddings are refused (they can run code), as base models are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file

from lorakiln.errors import LorakilnError

if TYPE_CHECKING:
    import torch

    from lorakiln.models.bundle import ModelBundle

EMBEDDING_SUFFIXES = (".safetensors",)


def find_embeddings(prompts: list[str], folder: str | Path | None) -> dict[str, Path]:
    """{stem: file} for embedding files in `folder` whose stem is a word of any prompt.

    A LoRA in the same folder is not an embedding even when it is named like the prompt's
    trigger word (the quickstart's `zwx.safetensors` for "a zwx"): it is left to the LoRA
    loader, as A1111 skips non-embedding files in its embeddings folder."""
    if not folder:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise LorakilnError(f"embeddings folder {folder} does not exist")
    text = " ".join(prompts)
    found = {}
    for path in sorted(folder.iterdir()):
        if (path.suffix in EMBEDDING_SUFFIXES and re.search(rf"(?<![\w]){re.escape(path.stem)}(?![\w])", text)
                and not _is_lora(path)):
            found[path.stem] = path
    return found


def _is_lora(path: Path) -> bool:
    """Whether a .safetensors file holds LoRA-family weights (kohya `lora_*` / `.lora_down.` keys,
    diffusers/PEFT `.lora_A.`), read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not readable: per_encoder_tensors reports it by name
        return False
    return any(k.startswith(("lora_unet", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys)


def per_encoder_tensors(path: Path, bundle: ModelBundle) -> list[torch.Tensor]:
    """The embedding tensor for each text encoder of `bundle`, from any accepted layout."""
    tensors = load_file(str(path))
    keys = list(bundle.family.ti_file_keys)
    if all(k in tensors for k in keys):
        return [tensors[k] for k in keys]
    params = [v for k, v in tensors.items() if k.startswith("string_to_param.")]
    if len(params) == 1 and len(keys) == 1:
        return params
    if len(tensors) == 1 and len(keys) == 1:
        return list(tensors.values())
    raise LorakilnError(f"{path.name} is not a {bundle.family.name} embedding (keys {sorted(tensors)}); "
                        f"expected {' + '.join(keys)}")


def load_embeddings(pipe: Any, bundle: ModelBundle, files: dict[str, Path]) -> None:
    """Register each file's vectors under its stem in every text encoder (diffusers expands a
    multi-vector stem to `stem stem_1 …` in prompts). Registration lives in the bundle's own
    tokenizers and encoders, so a stem already there (an earlier call, a grid cell) is skipped."""
    for stem, path in files.items():
        if stem in bundle.tokenizers[0].get_vocab():
            continue
        vectors = per_encoder_tensors(path, bundle)
        for name, tensor in zip(bundle.family.te_diffusers_prefixes, vectors, strict=True):
            width = getattr(pipe, name).get_input_embeddings().weight.shape[1]
            if tensor.shape[-1] != width:
                raise LorakilnError(f"{path.name}: vectors of width {tensor.shape[-1]} do not fit "
                                    f"{name} (width {width}); it was made for another model")
            pipe.load_textual_inversion(tensor.reshape(-1, width), token=stem, text_encoder=getattr(pipe, name),
                                        tokenizer=getattr(pipe, name.replace("text_encoder", "tokenizer")))
