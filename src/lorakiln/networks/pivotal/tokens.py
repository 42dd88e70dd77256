"""Pivotal tuning: new tokens in every tokenizer / text encoder, trained as textual inversion.

Semantics follow the diffusers advanced SDXL script (its blog post's "Pivotal Tuning"): each
*abstraction* (``token_abstraction``, default ``"TOK"``; several may be given, comma-separated)
gets ``num_new_tokens_per_abstraction`` new tokens — ``<s0><s1>`` for the first, ``<s2><s3>`` for
the next — added to **every** tokenizer and text encoder of the model (one for SD 1.x, two for
SDXL). Captions and prompts then say ``<s0><s1>`` wherever they said ``TOK``.

How only the new rows can change (the design choice, and why)
--------------------------------------------------------------
The script makes the whole token-embedding table trainable and, after every optimizer step,
copies the saved original rows back over the old ones ("retract"). That works with AdamW weight
decay, but per step it costs a gradient, two Adam moments and an update for the *whole* table
(49,408 × 768 for CLIP-L, × 1,280 for CLIP-G: ~0.6 GiB extra fp32 for SD1, ~1.5 GiB for SDXL) plus
a full-table restore copy. Zeroing the old rows' gradient with a hook is cheaper but wrong:
AdamW's decoupled weight decay shrinks every row whatever its gradient.

Here the table is **frozen** (``requires_grad=False``) and the new rows live in one small
``nn.Parameter`` of shape ``[n_new, dim]`` per encoder, kept in fp32 even when the encoder runs in
fp16/bf16. A forward hook on the encoder's input-embedding module swaps in those rows wherever a
new id appears (``torch.where`` over ``[B, 77, dim]``). So no optimizer — AdamW with decay,
Prodigy, 8-bit — ever sees an old row: they are bit-identical by construction, with no per-step
copy at all, and the optimizer state is ``n_new × dim`` floats. ``after_optimizer_step()`` writes
the ``n_new`` rows back into the table (so anything reading the table sees current values) and
applies the script's std pull. Measured (CPU, 1 thread, AdamW, one 77-token caption, embedding
forward + backward + step + restore/sync): full table + restore ~390 ms (CLIP-L 49,408 × 768) and
~690 ms (CLIP-G × 1,280); small parameter ~0.4 ms for either.

``freeze()`` (after ``train_text_encoder_ti_frac`` of the steps) writes the rows into the table
and removes the hook: from then on the encoder is a plain encoder whose table holds the final
vectors, and nothing an optimizer later does to the detached parameter can reach the model.

Pooled output and new ids (SDXL)
--------------------------------
transformers' CLIP pools the hidden state at ``input_ids.argmax()`` when the config says
``eos_token_id == 2`` — which the real SD 1.x and SDXL text-encoder configs do (the value predates
transformers PR #24773). That is the EOS position only while EOS (49407) is the largest id; the new
tokens get ids 49408+, so the pooled output would move to ``<s1>``. SD 1.x ignores the pooled
output, but SDXL's second encoder feeds it to the U-Net (``text_embeds``). A1111 and ComfyUI pool
at the EOS token whatever the embedding (A1111 and ComfyUI), so by default `pool_at_eos`
points such encoders at the tokenizer's real EOS id: identical output for every prompt without
new tokens (the first EOS is the first maximum), and the clients' pooling for prompts with them.
The diffusers script does not do this; stock diffusers inference (the advanced SDXL recipe's) therefore
pools at ``<s1>`` — `load_into_pipeline` applies the same fix to a pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorakiln.errors import ConfigError

#: Token string for new token number i (the script's ``<s{i}>``).
TOKEN_FORMAT = "<s{}>"
#: Prefix of this object's keys in a training-state tensor dict.
STATE_PREFIX = "pivotal."


def parse_abstractions(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"TOK"`` / ``"TOK, STYLE"`` / ``["TOK", "STYLE"]`` → ``("TOK", "STYLE")``, checked."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(s.strip() for s in items if s.strip())
    if not names:
        raise ConfigError("token_abstraction is empty; give the word your captions use, e.g. 'TOK'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"token_abstraction lists {', '.join(dupes)} more than once")
    return names


def plan_tokens(abstractions: Sequence[str], n_per: int) -> dict[str, tuple[str, ...]]:
    """``{"TOK": ("<s0>", "<s1>"), "STYLE": ("<s2>", "<s3>")}`` — numbering runs across abstractions."""
    if n_per < 1:
        raise ConfigError(f"num_new_tokens_per_abstraction must be at least 1, got {n_per}")
    return {a: tuple(TOKEN_FORMAT.format(i * n_per + j) for j in range(n_per))
            for i, a in enumerate(abstractions)}


@dataclass
class _Slot:
    """One text encoder's share: its table, the new ids, the trained rows and the hook."""

    embedding: nn.Embedding
    ids: torch.Tensor  # [n] long, the new tokens' ids in this tokenizer, in token order
    row_of: torch.Tensor  # [table rows] long: id → row of `param`, −1 for old ids
    param: nn.Parameter  # [n, dim] fp32, the trainable new rows
    init_std: float  # std of the table before the tokens were added
    handle: Any = None
    final: torch.Tensor | None = field(default=None)  # fp32 snapshot taken by freeze()


class PivotalEmbeddings:
    """New tokens in every tokenizer/encoder pair; built by `add_new_tokens`."""

    def __init__(self, tokens: dict[str, tuple[str, ...]], slots: list[_Slot], std_pull: float):
        self.tokens = tokens
        self._slots = slots
        self.std_pull = std_pull
        self.frozen = False
        # Whole-word, case-sensitive, longest first. The script uses plain `str.replace`, which
        # would also turn "TOKYO" into "<s0><s1>YO"; lookarounds instead of \b so abstractions
        # with punctuation ("<tok>") still match.
        alts = "|".join(re.escape(a) for a in sorted(tokens, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alts})(?!\w)")
        for slot in slots:
            slot.handle = slot.embedding.register_forward_hook(self._make_hook(slot))

    # -- text -------------------------------------------------------------------------------

    @property
    def abstractions(self) -> tuple[str, ...]:
        return tuple(self.tokens)

    @property
    def token_list(self) -> list[str]:
        """All new tokens in id order (the row order of every exported tensor)."""
        return [t for toks in self.tokens.values() for t in toks]

    def token_string(self, abstraction: str) -> str:
        """What replaces `abstraction` in text: its tokens joined without spaces (``<s0><s1>``)."""
        return "".join(self.tokens[abstraction])

    def replace_abstractions(self, text: str, word: str | None = None) -> str:
        """``"a photo of TOK"`` → ``"a photo of <s0><s1>"`` for captions and all prompts; with
        `word`, every abstraction becomes that word instead (a saved embedding's stem)."""
        return self._pattern.sub(lambda m: word if word is not None else self.token_string(m.group(0)), text)

    # -- training ---------------------------------------------------------------------------

    @property
    def num_encoders(self) -> int:
        return len(self._slots)

    @property
    def is_training(self) -> bool:
        """True until `freeze()`: the text-encoder forward must then run with gradients on."""
        return not self.frozen

    def token_ids(self, encoder_index: int) -> list[int]:
        return self._slots[encoder_index].ids.tolist()

    def trainable_parameters(self, encoder_index: int) -> list[nn.Parameter]:
        """The ``[n_new, dim]`` parameter of one encoder, for the optimizer's TI param group.

        The same list before and after `freeze()`, so the optimizer's layout (and a resumed
        optimizer state) never changes; a frozen parameter has no gradient and is skipped.
        """
        return [self._slots[encoder_index].param]

    def parameters(self) -> list[nn.Parameter]:
        return [p for i in range(self.num_encoders) for p in self.trainable_parameters(i)]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Call after every ``optimizer.step()``: std pull (if any), then rows → table.

        The pull is the script's ``retract_embeddings`` regulariser: scale the new rows by
        ``(table_std / rows_std) ** std_pull`` so they stay in the table's range. Old rows need
        no restoring here (see the module docstring). A no-op once frozen.
        """
        if self.frozen:
            return
        for slot in self._slots:
            if self.std_pull:
                slot.param.mul_((slot.init_std / slot.param.std().clamp_min(1e-12)) ** self.std_pull)
            _write_rows(slot, slot.param)

    @torch.no_grad()
    def freeze(self) -> None:
        """Stop training the embeddings (``train_text_encoder_ti_frac`` reached); idempotent.

        Writes the rows into each table, removes the hooks and drops the gradient: the new
        rows cannot change again, whatever the optimizer does to the detached parameter.
        """
        if self.frozen:
            return
        for slot in self._slots:
            slot.final = slot.param.detach().float().clone()
            _write_rows(slot, slot.final)
            slot.handle.remove()
            slot.param.requires_grad_(False)
            slot.param.grad = None
        self.frozen = True

    def vectors(self, encoder_index: int) -> torch.Tensor:
        """Current fp32 vectors ``[n_new, dim]`` of one encoder (a detached copy)."""
        slot = self._slots[encoder_index]
        return (slot.final if slot.final is not None else slot.param).detach().float().clone()

    # -- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly): per-encoder vectors and the frozen flag.

        The tokens themselves are rebuilt from the config by `add_new_tokens`; loading checks
        the shapes, so a run resumed with other abstractions or counts fails loudly.
        """
        out = {f"{STATE_PREFIX}{i}": self.vectors(i) for i in range(self.num_encoders)}
        out[f"{STATE_PREFIX}frozen"] = torch.tensor(float(self.frozen))
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore vectors in place (the optimizer keeps its parameter objects), then freeze if
        the saved run was frozen. Extra keys (e.g. LoRA tensors) are ignored."""
        if self.frozen:
            raise RuntimeError("load_state_dict on frozen embeddings; load before training starts")
        for i, slot in enumerate(self._slots):
            key = f"{STATE_PREFIX}{i}"
            if key not in state:
                raise ConfigError(f"resume state has no pivotal-tuning vectors ({key}); it was saved "
                                  "without train_text_encoder_ti")
            value = state[key]
            if tuple(value.shape) != tuple(slot.param.shape):
                raise ConfigError(f"resume state {key} has shape {tuple(value.shape)}, this run needs "
                                  f"{tuple(slot.param.shape)}: token_abstraction or "
                                  "num_new_tokens_per_abstraction changed")
            slot.param.copy_(value.to(slot.param.device, slot.param.dtype))
            _write_rows(slot, slot.param)
        if float(state.get(f"{STATE_PREFIX}frozen", torch.tensor(0.0))):
            self.freeze()

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _make_hook(slot: _Slot) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            ids = args[0]
            if slot.param.device != output.device:
                raise RuntimeError(
                    f"pivotal-tuning rows are on {slot.param.device} but the text encoder ran on "
                    f"{output.device}: call add_new_tokens after moving the encoders to their device")
            rows = slot.row_of[ids]  # no `.any()` check: that would sync the GPU every forward
            new = nn.functional.embedding(rows.clamp_min(0), slot.param).to(output.dtype)
            return torch.where((rows >= 0).unsqueeze(-1), new, output)

        return hook


def _write_rows(slot: _Slot, values: torch.Tensor) -> None:
    """Copy ``n_new`` rows into the table (cast to its dtype): cheap, never the whole table."""
    weight = slot.embedding.weight
    weight.data[slot.ids] = values.detach().to(weight.device, weight.dtype)


def add_new_tokens(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    abstractions: str | Sequence[str] = "TOK",
    n_per: int = 2,
    *,
    init: str | Sequence[str] = "random",
    seed: int = 0,
    std_pull: float = 0.1,
    fix_pooling: bool = True,
) -> PivotalEmbeddings:
    """Add ``<s0>…`` for each abstraction to every tokenizer/encoder pair; return the handle.

    * Tokens are added as *special* added tokens (as the script does), so BPE never splits
      them and ``<s0><s1>`` tokenizes to exactly the two new ids; a token already in a
      tokenizer is an error (the base model already carries pivotal tokens).
    * Each encoder's table grows to fit, its old rows untouched; the global RNG is not used.
    * ``init="random"``: normal noise scaled by **the std of the existing table** (the script's
      init), from a CPU generator seeded with ``seed`` (same vectors on any device). A word
      (or one word per abstraction) copies that word's token rows: cyclically when it has
      fewer tokens than ``n_per`` (the script's ``initializer_concept``), otherwise each new
      token takes the mean of one contiguous chunk, so no part of the word is dropped.
    * ``std_pull``: exponent of the script's per-step std regulariser (``retract_embeddings``
      uses 0.1, the default here); 0 turns it off.
    * ``fix_pooling``: call `pool_at_eos` on every encoder (module docstring, "Pooled output").

    Move/cast the encoders to their device and dtype *before* calling this.
    """
    if len(tokenizers) != len(text_encoders) or not tokenizers:
        raise ValueError(f"need one tokenizer per text encoder, got {len(tokenizers)} and "
                         f"{len(text_encoders)}")
    if std_pull < 0:
        raise ConfigError(f"std_pull must be >= 0, got {std_pull}")
    tokens = plan_tokens(parse_abstractions(abstractions), n_per)
    inits = _resolve_init(init, len(tokens))
    flat = [t for toks in tokens.values() for t in toks]
    for i, tokenizer in enumerate(tokenizers):  # check all before changing any
        taken = [t for t in flat if t in tokenizer.get_vocab()]
        if taken:
            raise ConfigError(f"tokens {', '.join(taken)} already exist in tokenizer {i + 1}: the base "
                              "model already has pivotal-tuning tokens; start from a model without them")
    gen = torch.Generator().manual_seed(seed)
    slots = [_add_to_encoder(tok, enc, tokens, inits, n_per, gen)
             for tok, enc in zip(tokenizers, text_encoders, strict=True)]
    if fix_pooling:
        for tok, enc in zip(tokenizers, text_encoders, strict=True):
            pool_at_eos(enc, tok)
    return PivotalEmbeddings(tokens, slots, std_pull)


def pool_at_eos(encoder: Any, tokenizer: Any) -> bool:
    """Make a legacy-config CLIP encoder pool at the tokenizer's EOS id instead of the largest id.

    Only changes encoders whose pooling uses the legacy ``eos_token_id == 2`` switch (module
    docstring); returns whether it changed anything. Outputs for prompts made of original
    tokens are unchanged.
    """
    text_model = getattr(encoder, "text_model", encoder)
    eos = getattr(tokenizer, "eos_token_id", None)
    if getattr(text_model, "eos_token_id", None) != 2 or eos is None or eos == 2:
        return False
    text_model.eos_token_id = eos
    encoder.config.eos_token_id = eos
    return True


def _resolve_init(init: str | Sequence[str], n_abstractions: int) -> list[str]:
    if isinstance(init, str):
        return [init] * n_abstractions
    if len(init) != n_abstractions:
        raise ConfigError(f"got {len(init)} initializer words for {n_abstractions} abstractions")
    return list(init)


def _add_to_encoder(tokenizer: Any, encoder: Any, tokens: dict[str, tuple[str, ...]],
                    inits: list[str], n_per: int, gen: torch.Generator) -> _Slot:
    from tokenizers import AddedToken

    flat = [t for toks in tokens.values() for t in toks]
    added = tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in flat],
                                 special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(flat)
    if added != len(flat) or len(set(ids)) != len(flat):
        raise RuntimeError(f"tokenizer added {added} of {len(flat)} new tokens (ids {ids})")

    emb = encoder.get_input_embeddings()
    old = emb.weight.detach()
    init_std = float(old.float().std())
    if max(ids) >= old.shape[0]:
        devices = [old.device] if old.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # resize's throwaway init must not shift seeds
            encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        emb = encoder.get_input_embeddings()
    emb.weight.requires_grad_(False)
    weight = emb.weight
    dim = weight.shape[1]
    rows = []
    for abstraction, word in zip(tokens, inits, strict=True):
        if word == "random":
            rows.append(torch.randn(n_per, dim, generator=gen) * init_std)
        else:
            rows.append(_word_rows(tokenizer, weight, word, n_per, abstraction))
    id_tensor = torch.tensor(ids, dtype=torch.long, device=weight.device)
    row_of = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
    row_of[id_tensor] = torch.arange(len(ids), device=weight.device)
    param = nn.Parameter(torch.cat(rows).to(weight.device, torch.float32))
    slot = _Slot(emb, id_tensor, row_of, param, init_std)
    _write_rows(slot, param)
    return slot


def _word_rows(tokenizer: Any, weight: torch.Tensor, word: str, n_per: int, abstraction: str) -> torch.Tensor:
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    if not word_ids:
        raise ConfigError(f"initializer word {word!r} for {abstraction!r} has no tokens")
    src = weight.detach().float().cpu()[torch.tensor(word_ids)]
    if len(word_ids) <= n_per:
        return src[torch.arange(n_per) % len(word_ids)].clone()
    return torch.stack([chunk.mean(0) for chunk in torch.tensor_split(src, n_per)])
