"""Pivotal-tuning tokens: adding, caption replacement, init, the only-new-rows guard, freeze, resume.

Single encoder: the tiny SD1 text encoder (`build_tiny_sd1`). Two encoders: two tiny CLIP
encoders of different widths (CLIPTextModel 32 + CLIPTextModelWithProjection 48), the SDXL
layout, so everything is checked per encoder before the SDXL family exists.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from lorakiln.errors import ConfigError
from lorakiln.models.tiny import TinyComponents, build_tiny_sd1, tiny_tokenizer
from lorakiln.networks.pivotal import PivotalEmbeddings, add_new_tokens, parse_abstractions, pool_at_eos

CAPTIONS = ["a photo of TOK", "TOK on a red background", "a TOK toy, blue"]


@pytest.fixture(scope="module")
def sd1_parts() -> TinyComponents:
    return build_tiny_sd1(None, seed=0)


@pytest.fixture
def sd1(sd1_parts: TinyComponents) -> tuple[list[Any], list[Any]]:
    """Fresh copies of the tiny SD1 tokenizer and text encoder (adding tokens mutates both)."""
    return [tiny_tokenizer()], [copy.deepcopy(sd1_parts.text_encoder)]


def two_encoders(seed: int = 0, legacy_eos: bool = False) -> tuple[list[Any], list[Any]]:
    """SDXL-shaped pair: CLIP-L-like (32 wide) and CLIP-G-like with projection (48 wide).

    ``legacy_eos`` writes the special ids the real SD/SDXL text-encoder configs carry
    (bos 0, eos 2, pad 1), which switch transformers' CLIP to argmax pooling.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    toks = [tiny_tokenizer(), tiny_tokenizer()]
    special = ((0, 2, 1) if legacy_eos else
               (toks[0].bos_token_id, toks[0].eos_token_id, toks[0].pad_token_id))
    common = dict(vocab_size=len(toks[0]), num_hidden_layers=2, max_position_embeddings=77,
                  bos_token_id=special[0], eos_token_id=special[1], pad_token_id=special[2])
    torch.manual_seed(seed)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, **common))
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, intermediate_size=96, num_attention_heads=4,
                                                     projection_dim=32, **common))
    return toks, [te1.eval(), te2.eval()]


@pytest.fixture
def pair() -> tuple[list[Any], list[Any]]:
    return two_encoders()


def _ids(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _loss(emb: PivotalEmbeddings, toks: list[Any], encs: list[Any], extra: torch.Tensor | None = None) -> torch.Tensor:
    """A loss through every text encoder on captions that use the new tokens."""
    texts = [emb.replace_abstractions(c) for c in CAPTIONS]
    total = torch.zeros(())
    for i, (tok, enc) in enumerate(zip(toks, encs, strict=True)):
        hidden = enc(_ids(tok, texts))[0]
        if extra is not None:
            hidden = hidden * extra
        target = torch.linspace(-1, 1, hidden.shape[-1]) * (i + 1)
        total = total + (hidden - target).pow(2).mean()
    return total


def _train(emb: PivotalEmbeddings, toks: list[Any], encs: list[Any], opt: torch.optim.Optimizer,
           steps: int, extra: torch.Tensor | None = None) -> None:
    for _ in range(steps):
        _loss(emb, toks, encs, extra).backward()
        opt.step()
        emb.after_optimizer_step()
        opt.zero_grad(set_to_none=True)


# -- tokens and text ------------------------------------------------------------------------


def test_parse_abstractions() -> None:
    assert parse_abstractions("TOK") == ("TOK",)
    assert parse_abstractions(" TOK , STYLE ,") == ("TOK", "STYLE")
    with pytest.raises(ConfigError, match="empty"):
        parse_abstractions(" , ")
    with pytest.raises(ConfigError, match="more than once"):
        parse_abstractions("TOK,TOK")


def test_tokens_added_to_every_tokenizer_and_encoder(pair: tuple[list[Any], list[Any]]) -> None:
    toks, encs = pair
    rows_before = [e.get_input_embeddings().weight.shape[0] for e in encs]
    emb = add_new_tokens(toks, encs, "TOK,STYLE", 2)
    assert emb.tokens == {"TOK": ("<s0>", "<s1>"), "STYLE": ("<s2>", "<s3>")}
    for i, (tok, enc) in enumerate(zip(toks, encs, strict=True)):
        ids = emb.token_ids(i)
        assert ids == tok.convert_tokens_to_ids(["<s0>", "<s1>", "<s2>", "<s3>"])
        assert enc.get_input_embeddings().weight.shape[0] == rows_before[i] + 4 == max(ids) + 1
        assert enc.config.vocab_size == max(ids) + 1
        # BPE never splits the new tokens, also when glued to each other or to words.
        assert tok("a photo of <s0><s1>").input_ids[4:6] == ids[:2]
        assert tok("<s2><s3>dog", add_special_tokens=False).input_ids[:2] == ids[2:]
        assert emb.vectors(i).shape == (4, enc.config.hidden_size)


def test_replace_abstractions_whole_words_only(sd1: tuple[list[Any], list[Any]]) -> None:
    emb = add_new_tokens(*sd1, "TOK, TOK2", 2)
    assert emb.replace_abstractions("a photo of TOK") == "a photo of <s0><s1>"
    assert emb.replace_abstractions("TOK, TOK2 style") == "<s0><s1>, <s2><s3> style"
    assert emb.replace_abstractions("TOK's dog (TOK:1.2)") == "<s0><s1>'s dog (<s0><s1>:1.2)"
    # Inside other words, and in another case, the abstraction is left alone.
    assert emb.replace_abstractions("TOKYO and tok") == "TOKYO and tok"


def test_adding_twice_is_an_error_that_changes_nothing(pair: tuple[list[Any], list[Any]]) -> None:
    toks, encs = pair
    add_new_tokens(toks[1:], encs[1:])  # the second tokenizer already has <s0><s1>
    sizes = [len(t) for t in toks], [e.get_input_embeddings().weight.shape[0] for e in encs]
    with pytest.raises(ConfigError, match="already exist in tokenizer 2"):
        add_new_tokens(toks, encs)
    assert ([len(t) for t in toks], [e.get_input_embeddings().weight.shape[0] for e in encs]) == sizes


def test_random_init_uses_table_std_seeded_without_global_rng(sd1_parts: TinyComponents) -> None:
    table_std = float(sd1_parts.text_encoder.get_input_embeddings().weight.detach().std())
    state = torch.get_rng_state()
    a = add_new_tokens([tiny_tokenizer()], [copy.deepcopy(sd1_parts.text_encoder)], "TOK", 64, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # resize and init leave the global RNG alone
    b = add_new_tokens([tiny_tokenizer()], [copy.deepcopy(sd1_parts.text_encoder)], "TOK", 64, seed=7)
    assert torch.equal(a.vectors(0), b.vectors(0))
    assert float(a.vectors(0).std()) == pytest.approx(table_std, rel=0.1)


def test_word_init_copies_the_word_rows(sd1_parts: TinyComponents) -> None:
    table = sd1_parts.text_encoder.get_input_embeddings().weight.detach()
    tok = tiny_tokenizer()
    red = tok("red", add_special_tokens=False).input_ids
    xyz = tok("xyz", add_special_tokens=False).input_ids  # not in the tiny vocab: 3 byte tokens
    assert len(red) == 1 and len(xyz) == 3
    emb = add_new_tokens([tok], [copy.deepcopy(sd1_parts.text_encoder)], "TOK,OBJ", 2, init=["red", "xyz"])
    v = emb.vectors(0)
    assert torch.equal(v[0], table[red[0]]) and torch.equal(v[1], table[red[0]])  # cycled
    assert torch.allclose(v[2], table[xyz[:2]].mean(0)) and torch.equal(v[3], table[xyz[2]])  # chunk means


# -- the guard: only the new rows change ----------------------------------------------------


@pytest.mark.parametrize("case", ["sd1", "pair"])
def test_adamw_with_weight_decay_changes_only_new_rows_and_freeze_stops_them(
    case: str, request: pytest.FixtureRequest
) -> None:
    toks, encs = request.getfixturevalue(case)
    emb = add_new_tokens(toks, encs, "TOK", 2, seed=1, std_pull=0.0)  # rows move by training alone
    tables = [e.get_input_embeddings().weight for e in encs]
    before = [t.detach().clone() for t in tables]
    lora_stand_in = torch.nn.Parameter(torch.ones(()))  # keeps the optimizer busy after freeze
    groups = [{"params": emb.trainable_parameters(i), "lr": 5e-2, "weight_decay": 0.5}
              for i in range(len(encs))] + [{"params": [lora_stand_in], "lr": 1e-2, "weight_decay": 0.5}]
    opt = torch.optim.AdamW(groups)
    assert all(not t.requires_grad for t in tables)
    _train(emb, toks, encs, opt, steps=3, extra=lora_stand_in)
    for i, (table, old) in enumerate(zip(tables, before, strict=True)):
        new = emb.token_ids(i)
        keep = torch.ones(table.shape[0], dtype=torch.bool)
        keep[new] = False
        assert torch.equal(table[keep], old[keep]), "an old row changed"
        assert not torch.equal(table[new], old[new]), "the new rows did not train"
        assert torch.equal(table[new], emb.vectors(i))  # after_optimizer_step synced the table

    outputs = [enc(_ids(tok, ["a photo of <s0><s1>"]))[0] for tok, enc in zip(toks, encs, strict=True)]
    emb.freeze()
    assert not emb.is_training
    frozen = [t.detach().clone() for t in tables]
    vecs = [emb.vectors(i) for i in range(len(encs))]
    stand_in_before = lora_stand_in.detach().clone()
    _train(emb, toks, encs, opt, steps=2, extra=lora_stand_in)
    assert not torch.equal(lora_stand_in.detach(), stand_in_before)  # the optimizer did step
    for i, table in enumerate(tables):
        assert torch.equal(table, frozen[i])
        assert torch.equal(emb.vectors(i), vecs[i])
    # Without the hook the plain encoder computes what the hooked one did.
    with torch.no_grad():
        for tok, enc, out in zip(toks, encs, outputs, strict=True):
            assert torch.equal(enc(_ids(tok, ["a photo of <s0><s1>"]))[0] * stand_in_before, out * stand_in_before)


def test_gradient_reaches_only_the_small_parameter(sd1: tuple[list[Any], list[Any]]) -> None:
    emb = add_new_tokens(*sd1, "TOK", 2)
    _loss(emb, *sd1).backward()
    (param,) = emb.trainable_parameters(0)
    assert param.shape == (2, 32) and param.dtype == torch.float32
    assert param.grad is not None and param.grad.abs().sum() > 0
    assert sd1[1][0].get_input_embeddings().weight.grad is None


def test_half_precision_encoder_keeps_fp32_rows(sd1: tuple[list[Any], list[Any]]) -> None:
    toks, encs = sd1
    encs[0].to(torch.bfloat16)
    emb = add_new_tokens(toks, encs, "TOK", 2)
    (param,) = emb.trainable_parameters(0)
    assert param.dtype == torch.float32
    hidden = encs[0](_ids(toks[0], ["a photo of <s0><s1>"]))[0]
    assert hidden.dtype == torch.bfloat16
    hidden.float().pow(2).mean().backward()
    assert param.grad is not None and param.grad.dtype == torch.float32


def test_std_pull_scales_rows_toward_table_std(sd1: tuple[list[Any], list[Any]]) -> None:
    emb = add_new_tokens(*sd1, "TOK", 8, std_pull=0.1)
    (param,) = emb.trainable_parameters(0)
    with torch.no_grad():
        param.mul_(3.0)
    before = param.detach().clone()
    table_std = float(sd1[1][0].get_input_embeddings().weight[: min(emb.token_ids(0))].std())
    emb.after_optimizer_step()
    expected = before * (table_std / float(before.std())) ** 0.1
    assert torch.allclose(param.detach(), expected, rtol=1e-5)


# -- pooled output (SDXL text_embeds) --------------------------------------------------------


@pytest.mark.parametrize("fix", [True, False])
def test_pooled_output_stays_at_eos_with_legacy_configs(fix: bool) -> None:
    toks, encs = two_encoders(legacy_eos=True)
    tok, enc = toks[1], encs[1]
    plain = _ids(tok, ["a photo of red"])
    with torch.no_grad():
        before = enc(plain).text_embeds
    add_new_tokens(toks, encs, "TOK", 2, fix_pooling=fix)
    ids = _ids(tok, ["a photo of <s0><s1>"])
    eos = int((ids[0] == tok.eos_token_id).int().argmax())
    with torch.no_grad():
        out = enc(ids)
        assert torch.equal(enc(plain).text_embeds, before)  # original prompts: bit-identical
        at = {name: enc.text_projection(out.last_hidden_state[0, pos]) for name, pos in (("eos", eos), ("s1", 5))}
    # Fixed: pooled at EOS as A1111/ComfyUI do. Unfixed (the script, stock diffusers): at <s1>.
    assert torch.allclose(out.text_embeds[0], at["eos" if fix else "s1"])
    assert pool_at_eos(enc, tok) is not fix  # already pointed at EOS when fixed


# -- exact resume -----------------------------------------------------------------------------


def _fresh_run(sd1_parts: TinyComponents) -> tuple[PivotalEmbeddings, list[Any], list[Any], torch.optim.Optimizer]:
    toks, encs = [tiny_tokenizer()], [copy.deepcopy(sd1_parts.text_encoder)]
    emb = add_new_tokens(toks, encs, "TOK", 2, seed=3, std_pull=0.1)
    opt = torch.optim.AdamW(emb.trainable_parameters(0), lr=5e-2, weight_decay=0.1)
    return emb, toks, encs, opt


@pytest.mark.parametrize("freeze_at", [None, 2])
def test_resume_is_exact(sd1_parts: TinyComponents, freeze_at: int | None) -> None:
    def run(emb: PivotalEmbeddings, toks: list[Any], encs: list[Any], opt: Any, start: int, stop: int) -> None:
        for step in range(start, stop):
            if step == freeze_at:
                emb.freeze()
            if emb.is_training:
                _train(emb, toks, encs, opt, steps=1)

    full = _fresh_run(sd1_parts)
    run(*full, 0, 4)

    first = _fresh_run(sd1_parts)
    run(*first, 0, 3)
    # Through safetensors bytes, as the trainer's state folder stores tensors.
    state = load(save(first[0].state_dict()))
    opt_state = copy.deepcopy(first[3].state_dict())

    second = _fresh_run(sd1_parts)
    second[0].load_state_dict(state)
    second[3].load_state_dict(opt_state)
    assert second[0].frozen == (freeze_at is not None)
    run(*second, 3, 4)
    assert torch.equal(second[0].vectors(0), full[0].vectors(0))
    table = second[2][0].get_input_embeddings().weight
    assert torch.equal(table, full[2][0].get_input_embeddings().weight)


def test_resume_with_other_token_count_fails(sd1_parts: TinyComponents) -> None:
    emb, *_ = _fresh_run(sd1_parts)
    other = add_new_tokens([tiny_tokenizer()], [copy.deepcopy(sd1_parts.text_encoder)], "TOK", 3)
    with pytest.raises(ConfigError, match="num_new_tokens_per_abstraction"):
        other.load_state_dict(emb.state_dict())
