"""The ``<name>_emb.safetensors`` file of pivotal tuning: write, read, load into a pipeline.

One key per text encoder, named from data: ``clip_l`` for the first, ``clip_g`` for the second
(``EMBEDDING_KEYS``), each ``[n_new, dim]`` with the rows in token order (``<s0>, <s1>, …``).
This one layout loads in all three clients at once (and in the "Inference" section of the
diffusers advanced SDXL recipe):

* **SD 1.x → ``{"clip_l": [n, 768]}``, exactly one key.** A1111 (``textual_inversion.py``
  ``create_embedding_from_data``) accepts a single-key tensor dict ("diffuser concepts") of width
  768 and *rejects* a dict with several terms; ComfyUI (``sd1_clip.py`` ``load_embed``) picks the
  SD1 tokenizer's ``embedding_key`` ``clip_l`` (or else the first value); diffusers
  (``load_textual_inversion``) takes a single-key dict as ``{token: tensor}`` and the diffusers
  advanced SDXL recipe ``load_textual_inversion(sd["clip_l"],
  token=["<s0>", "<s1>"], …)`` works unchanged. kohya's ``emb_params`` name would also load in
  A1111/ComfyUI, but not through that recipe, and a second alias key would break A1111 and
  diffusers — so one ``clip_l`` key.
* **SDXL → ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``**: A1111's SDXL form (both keys, same
  ``n``), ComfyUI's per-tokenizer keys, and diffusers per encoder (it raises on the two-key dict
  itself, so `load_into_pipeline` passes each tensor with its encoder and tokenizer).

A1111 and ComfyUI name the embedding after the file stem (``<name>_emb``), diffusers after the
tokens given at load; the metadata records the tokens and abstractions so a tool can do either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from lorakiln.atomic import atomic_path
from lorakiln.errors import FileFormatError
from lorakiln.models.family import ModelFamily
from lorakiln.networks.pivotal.tokens import TOKEN_FORMAT, PivotalEmbeddings, pool_at_eos
from lorakiln.safetensors_check import load_checked, refuse_non_finite

#: File key of encoder i (kohya `sdxl_train_textual_inversion.py`, diffusers advanced script).
EMBEDDING_KEYS: tuple[str, ...] = ("clip_l", "clip_g")
#: kohya/ModelSpec: every textual inversion names the SGM repo as its implementation.
TI_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
MODELSPEC_VERSION = "1.0.1"
#: Metadata keys written by lorakiln (JSON values).
MD_TOKENS = "lorakiln.ti.tokens"
MD_ABSTRACTIONS = "lorakiln.ti.abstractions"
MD_KEYS = "lorakiln.ti.encoder_keys"


def embeddings_path(lora_path: str | Path) -> Path:
    """``out/my_lora.safetensors`` → ``out/my_lora_emb.safetensors`` (the script's name)."""
    lora_path = Path(lora_path)
    return lora_path.with_name(f"{lora_path.stem}_emb.safetensors")


def ti_architecture(family: ModelFamily) -> str:
    """``modelspec.architecture`` of a TI file: the family's LoRA one with ``/textual-inversion``
    (kohya `sai_model_spec.py`: ``stable-diffusion-v1/textual-inversion``, …)."""
    base, sep, kind = family.modelspec_lora_architecture.rpartition("/")
    if not sep or kind != "lora":
        raise ValueError(f"cannot derive a TI architecture from {family.modelspec_lora_architecture!r}")
    return f"{base}/textual-inversion"


def embeddings_tensors(
    embeddings: PivotalEmbeddings,
    *,
    abstraction: str | None = None,
    keys: Sequence[str] = EMBEDDING_KEYS,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """``{key_i: [n, dim_i]}`` per encoder; ``abstraction`` keeps only that concept's rows (one
    file per concept suits A1111/ComfyUI, where a file is one prompt word)."""
    if embeddings.num_encoders > len(keys):
        raise ValueError(f"{embeddings.num_encoders} text encoders but only file keys {tuple(keys)}")
    rows = slice(None)
    if abstraction is not None:
        start = list(embeddings.tokens).index(abstraction) * len(embeddings.tokens[abstraction])
        rows = slice(start, start + len(embeddings.tokens[abstraction]))
    out = {}
    for i in range(embeddings.num_encoders):
        vec = embeddings.vectors(i)[rows].cpu()
        out[keys[i]] = (vec if dtype is None else vec.to(dtype)).contiguous()
    return out


def save_embeddings(
    path: str | Path,
    embeddings: PivotalEmbeddings,
    *,
    family: ModelFamily | None = None,
    title: str | None = None,
    abstraction: str | None = None,
    keys: Sequence[str] = EMBEDDING_KEYS,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the embeddings file atomically, fp32 unless ``dtype`` says otherwise.

    Metadata: ``modelspec.*`` (architecture ``…/textual-inversion`` when ``family`` is given,
    title, date, ``trigger_phrase`` = the token strings) and the lorakiln keys ``MD_TOKENS``
    (token list), ``MD_ABSTRACTIONS`` (``{"TOK": ["<s0>", "<s1>"]}``), ``MD_KEYS`` (encoder order,
    which the file's alphabetical key order does not keep). ``metadata`` adds to these.
    """
    path = Path(path)
    tensors = embeddings_tensors(embeddings, abstraction=abstraction, keys=keys, dtype=dtype)
    names = [abstraction] if abstraction is not None else list(embeddings.tokens)
    concept = {a: list(embeddings.tokens[a]) for a in names}
    md = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.implementation": TI_IMPLEMENTATION,
        "modelspec.title": title or path.stem,
        "modelspec.date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "modelspec.trigger_phrase": ", ".join(embeddings.token_string(a) for a in names),
        MD_TOKENS: json.dumps([t for a in names for t in concept[a]]),
        MD_ABSTRACTIONS: json.dumps(concept),
        MD_KEYS: json.dumps(list(tensors)),
    }
    if family is not None:
        md["modelspec.architecture"] = ti_architecture(family)
    md |= dict(metadata or {})
    bad = [k for k, v in md.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not str: {', '.join(bad)}")
    data = save(tensors, md)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


@dataclass
class EmbeddingsFile:
    """A loaded ``_emb.safetensors``: tensors per encoder key, in encoder order, and the tokens."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    #: New-token strings, one per row (from metadata; ``<s0>…`` for files without it).
    tokens: list[str]
    #: ``{abstraction: [tokens]}`` (empty when the file does not say).
    abstractions: dict[str, list[str]]

    @property
    def keys(self) -> list[str]:
        return list(self.tensors)


def load_embeddings(path: str | Path) -> EmbeddingsFile:
    """Read a pivotal-tuning embeddings file (ours, or the diffusers script's).

    Through the shared checks (`load_checked`, `refuse_non_finite`): a damaged file or NaN
    vectors end in one `FileFormatError` naming the file, as for every other file lorakiln reads,
    and so do rows or metadata that disagree.
    """
    path = Path(path)
    raw, md = load_checked(path)
    refuse_non_finite(path, raw, what="embedding")
    order = _metadata_json(path, md, MD_KEYS, [k for k in EMBEDDING_KEYS if k in raw])
    order = [k for k in order if k in raw] + sorted(k for k in raw if k not in order)
    tensors = {k: raw[k] for k in order}
    if any(t.dim() != 2 for t in tensors.values()):
        shapes = {k: list(t.shape) for k, t in tensors.items()}
        raise FileFormatError(f"{path}: an embedding is [tokens, width] per encoder, but the file holds {shapes}")
    counts = {k: t.shape[0] for k, t in tensors.items()}
    if len(set(counts.values())) > 1:
        raise FileFormatError(f"{path}: encoders have different token counts {counts}; the file is damaged")
    n = next(iter(counts.values()), 0)
    tokens = _metadata_json(path, md, MD_TOKENS, [TOKEN_FORMAT.format(i) for i in range(n)])
    if len(tokens) != n:
        raise FileFormatError(f"{path}: metadata names {len(tokens)} tokens for {n} rows; the file is damaged")
    abstractions = _metadata_json(path, md, MD_ABSTRACTIONS, {})
    return EmbeddingsFile(tensors, md, tokens, abstractions)


def _metadata_json(path: Path, md: Mapping[str, str], key: str, default: Any) -> Any:
    """The JSON value of metadata `key` (`default` when absent); text that is not JSON of the
    default's type is a `FileFormatError` naming the file rather than a `JSONDecodeError`."""
    if key not in md:
        return default
    try:
        value = json.loads(md[key])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, type(default)):
        raise FileFormatError(f"{path}: metadata {key} is {md[key]!r}, not the JSON {type(default).__name__} "
                              "lorakiln writes there; the file is damaged")
    return value


def load_into_pipeline(
    pipe: Any,
    file: EmbeddingsFile | str | Path,
    text_encoder_names: Sequence[str] = ("text_encoder", "text_encoder_2"),
    *,
    fix_pooling: bool = True,
) -> list[str]:
    """Load the file into a diffusers pipeline as the diffusers advanced SDXL recipe's "Inference" section does: the
    tensor of encoder i with ``token=[<s0>, …]`` into ``text_encoder_names[i]`` and its
    tokenizer (``text_encoder_2`` → ``tokenizer_2``). Pass ``family.te_diffusers_prefixes``.

    ``fix_pooling`` applies `pool_at_eos` as training did, so SDXL's pooled embedding of a
    prompt with the new tokens matches training (and A1111/ComfyUI). Returns the tokens,
    which prompts then use as ``<s0><s1>``."""
    if not isinstance(file, EmbeddingsFile):
        file = load_embeddings(file)
    if len(file.tensors) > len(text_encoder_names):
        raise ValueError(f"file has {len(file.tensors)} encoders, pipeline names {tuple(text_encoder_names)}")
    for tensor, name in zip(file.tensors.values(), text_encoder_names, strict=False):
        tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"))
        encoder = getattr(pipe, name)
        load_textual_inversion_quietly(pipe, tensor, token=list(file.tokens), text_encoder=encoder,
                                       tokenizer=tokenizer)
        if fix_pooling:
            pool_at_eos(encoder, tokenizer)
    return list(file.tokens)


def load_textual_inversion_quietly(pipe: Any, tensor: torch.Tensor, **kwargs: Any) -> None:
    """`pipe.load_textual_inversion` without transformers' mean-resizing notice.

    diffusers grows the embedding matrix with `resize_token_embeddings`, whose default
    initialises the new rows from the old ones' mean and covariance and says so; the rows are
    overwritten with the file's vectors straight after, so the notice only misleads.
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        pipe.load_textual_inversion(tensor, **kwargs)
    finally:
        hf_logging.set_verbosity(before)
