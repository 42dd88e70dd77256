"""Pivotal tuning (textual inversion of new tokens trained alongside the LoRA), any model family.

* `tokens` — `add_new_tokens` → `PivotalEmbeddings`: new ``<s0><s1>…`` tokens in every
  tokenizer/encoder, caption replacement, trainable rows, freeze, resume state
* `files` — ``<name>_emb.safetensors`` (``clip_l`` / ``clip_g``): `save_embeddings`,
  `load_embeddings`, `load_into_pipeline`

Importing this package imports torch, so the CLI imports it lazily.
"""

from lorakiln.networks.pivotal.files import (
    EMBEDDING_KEYS,
    EmbeddingsFile,
    embeddings_path,
    embeddings_tensors,
    load_embeddings,
    load_into_pipeline,
    save_embeddings,
)
from lorakiln.networks.pivotal.tokens import (
    PivotalEmbeddings,
    add_new_tokens,
    parse_abstractions,
    plan_tokens,
    pool_at_eos,
)

__all__ = [
    "EMBEDDING_KEYS",
    "EmbeddingsFile",
    "PivotalEmbeddings",
    "add_new_tokens",
    "embeddings_path",
    "embeddings_tensors",
    "load_embeddings",
    "load_into_pipeline",
    "parse_abstractions",
    "plan_tokens",
    "pool_at_eos",
    "save_embeddings",
]
