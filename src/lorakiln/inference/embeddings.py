"""Textual-inversion embeddings by file stem, with A1111 and ComfyUI semantics
(A1111 `modules/textual_inversion/textual_inversion.py`, ComfyUI `comfy/sd1_clip.py` `load_embed`).

A1111 registers every file in the embeddings folder under its stem and replaces that word in the
prompt; lorakiln loads only the files whose stem appears in the prompt. Accepted layouts:
SDXL `clip_l` + `clip_g`, a single-key dict (`clip_l`, kohya `emb_params`, diffusers'
`{token: tensor}`), and A1111's `string_to_param` — in `.safetensors`; pickled `.pt`/`.bin`
embeddings are refused (they can run code), as base models are.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakiln.errors import LorakilnError
from lorakiln.networks.pivotal.files import load_textual_inversion_quietly
from lorakiln.safetensors_check import load_checked, read_layout, refuse_non_finite

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
        if (path.suffix in EMBEDDING_SUFFIXES and _word(path.stem).search(text)
                and not _is_lora(path)):
            found[path.stem] = path
    return found


def _word(stem: str) -> re.Pattern[str]:
    """`stem` as a whole word of a prompt (how `find_embeddings` matches a file to a prompt)."""
    return re.compile(rf"(?<![\w]){re.escape(stem)}(?![\w])")


@functools.lru_cache(maxsize=256)
def _file_short_hash(path: str, mtime_ns: int, size: int) -> str:
    """An embedding file's A1111 short hash, read once per file version (mtime and size key it,
    so a rewritten file is hashed again)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def embedding_short_hash(path: Path) -> str:
    """A1111's short hash of a textual-inversion file: the first 12 hex digits of the SHA-256 of
    the whole file. A1111 `modules/textual_inversion/textual_inversion.py` sets
    `embedding.set_hash(hashes.sha256(filename, "textual_inversion/" + name))` and `set_hash`
    keeps `hash[0:12]`; `modules/hashes.py` `sha256` hashes every byte of the file (the
    safetensors-body-only "addnet" hash is used for LoRAs, not for embeddings)."""
    stat = path.stat()
    return _file_short_hash(str(path), stat.st_mtime_ns, stat.st_size)


def embedding_hashes(files: dict[str, Path], prompts: list[str]) -> str | None:
    """A1111's ``TI hashes`` infotext value for the embeddings `prompts` use (``name: hash, …``),
    or None when they use none.

    A1111 (`modules/sd_hijack_clip.py`, `textual_inversion_add_hashes_to_infotext`) writes one
    ``name: shorthash`` per embedding the encoder met, with ``:`` and ``,`` removed from the
    name, the prompt's embeddings before the negative prompt's. Here each embedding is listed
    once, in order of first use: positive prompt first, then the negative one."""
    def first_use(stem: str) -> tuple[int, int]:
        for index, text in enumerate(prompts):
            if m := _word(stem).search(text):
                return index, m.start()
        return len(prompts), 0

    ordered = sorted(files, key=first_use)
    pairs = [f"{stem.replace(':', '').replace(',', '')}: {embedding_short_hash(files[stem])}" for stem in ordered]
    return ", ".join(pairs) or None


def _is_lora(path: Path) -> bool:
    """Whether a .safetensors file holds LoRA-family weights (kohya `lora_*` / `.lora_down.` keys,
    diffusers/PEFT `.lora_A.`), read from its header only. The prompt names this file, so a
    damaged one is refused here, naming it (`safetensors_check`)."""
    keys = list(read_layout(path).tensors)
    return any(k.startswith(("lora_unet", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys)


def per_encoder_tensors(path: Path, bundle: ModelBundle) -> list[torch.Tensor]:
    """The embedding tensor for each text encoder of `bundle`, from any accepted layout."""
    tensors, _ = load_checked(path)
    refuse_non_finite(path, tensors, what="embedding")
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
    multi-vector stem to `stem stem_1 …` in prompts).

    Registration lives in the bundle's own tokenizers and encoders and is remembered per stem
    with the file it came from: the same file again (a grid cell, the next image) is skipped;
    another file with that stem (`zwx_emb` of a second run folder, or the file rewritten) puts
    its vectors into the stem's rows, so a prompt always means the file it names."""
    loaded: dict[str, tuple[str, int, int, int]] = bundle.extra.setdefault("embedding_files", {})
    for stem, path in files.items():
        stat = path.stat()
        source = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if stem in loaded and loaded[stem][:3] == source:
            continue
        if stem not in loaded and stem in bundle.tokenizers[0].get_vocab():
            raise LorakilnError(f"{path.name}: {stem!r} is already a token of the model's tokenizer, so the "
                                "embedding cannot take that word; rename the file (e.g. add `_emb`)")
        parts = []  # (encoder, tokenizer, vectors [n, width]) per text encoder
        for name, tensor in zip(bundle.family.te_diffusers_prefixes, per_encoder_tensors(path, bundle), strict=True):
            encoder, tokenizer = getattr(pipe, name), getattr(pipe, name.replace("text_encoder", "tokenizer"))
            width = encoder.get_input_embeddings().weight.shape[1]
            if tensor.shape[-1] != width:
                raise LorakilnError(f"{path.name}: vectors of width {tensor.shape[-1]} do not fit "
                                    f"{name} (width {width}); it was made for another model")
            parts.append((encoder, tokenizer, tensor.reshape(-1, width)))
        count = parts[0][2].shape[0]
        if stem in loaded and loaded[stem][3] != count:
            raise LorakilnError(f"{path.name} has {count} vectors but {stem!r} was loaded with "
                                f"{loaded[stem][3]} from {loaded[stem][0]} in this session; rename one "
                                "of the files or restart")
        for encoder, tokenizer, rows in parts:
            if stem in loaded:
                _overwrite_rows(encoder, tokenizer, stem, rows)
            else:
                load_textual_inversion_quietly(pipe, rows, token=stem, text_encoder=encoder, tokenizer=tokenizer)
        loaded[stem] = (*source, count)


def _overwrite_rows(encoder: Any, tokenizer: Any, stem: str, rows: torch.Tensor) -> None:
    """Put `rows` (`[n, width]`) into the rows of `stem stem_1 …`, the tokens diffusers added for it."""
    import torch

    tokens = [stem, *(f"{stem}_{i}" for i in range(1, rows.shape[0]))]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[torch.tensor(ids)] = rows.to(device=weight.device, dtype=weight.dtype)
