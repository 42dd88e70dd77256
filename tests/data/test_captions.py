"""Caption shuffle / keep_tokens / dropout with kohya semantics."""

from __future__ import annotations

import random

import pytest

from lorakiln.data.captions import process_caption, split_tags

CAPTION = "zwx, toy, red, small, on a table, studio light"


def _rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def test_no_options_returns_caption_unchanged() -> None:
    odd = "zwx ,toy,, red "
    assert process_caption(odd, rng=_rng()) == odd
    assert process_caption(odd, keep_tokens=2, rng=_rng()) == odd  # keep_tokens alone: no-op (kohya)


def test_no_options_consume_no_randomness() -> None:
    rng = _rng(5)
    process_caption(CAPTION, rng=rng)
    assert rng.random() == _rng(5).random()


def test_split_tags_strips_and_drops_empty() -> None:
    assert split_tags(" a ,b,, c ,") == ["a", "b", "c"]


def test_shuffle_keeps_tags_and_keep_tokens_in_front() -> None:
    tags = split_tags(CAPTION)
    seen_orders = set()
    for seed in range(30):
        out = process_caption(CAPTION, shuffle=True, keep_tokens=2, rng=_rng(seed)).split(", ")
        assert out[:2] == ["zwx", "toy"]
        assert sorted(out) == sorted(tags)
        seen_orders.add(tuple(out))
    assert len(seen_orders) > 5  # it really shuffles


def test_shuffle_is_deterministic_given_rng() -> None:
    a = process_caption(CAPTION, shuffle=True, rng=_rng(7))
    b = process_caption(CAPTION, shuffle=True, rng=_rng(7))
    assert a == b


def test_tag_dropout_never_drops_kept_tokens() -> None:
    for seed in range(30):
        out = process_caption(CAPTION, keep_tokens=1, caption_tag_dropout_rate=0.5, rng=_rng(seed))
        tags = out.split(", ")
        assert tags[0] == "zwx"
        assert set(tags) <= set(split_tags(CAPTION))
    everything = process_caption(CAPTION, keep_tokens=1, caption_tag_dropout_rate=1.0, rng=_rng())
    assert everything == "zwx"


def test_tag_dropout_rate_is_roughly_honoured() -> None:
    rng = _rng(1)
    kept = sum(len(process_caption(CAPTION, caption_tag_dropout_rate=0.3, rng=rng).split(", "))
               for _ in range(400))
    assert 0.6 < kept / (400 * 6) < 0.8


def test_caption_dropout() -> None:
    assert process_caption(CAPTION, caption_dropout_rate=1.0, rng=_rng()) == ""
    assert process_caption(CAPTION, drop_all=True, shuffle=True, rng=_rng()) == ""
    rng = _rng(3)
    empty = sum(process_caption(CAPTION, caption_dropout_rate=0.25, rng=rng) == "" for _ in range(800))
    assert 0.18 < empty / 800 < 0.32


def test_bad_rate_rejected() -> None:
    with pytest.raises(ValueError):
        process_caption(CAPTION, caption_dropout_rate=1.5, rng=_rng())
