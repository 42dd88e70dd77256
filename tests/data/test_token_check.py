"""Trigger-word check with the bundled SD CLIP tokenizer (no network)."""

from __future__ import annotations

import socket

import pytest

from lorakiln.data.token_check import check_token, suggest_tokens, tokenize


def test_common_names_are_whole_vocabulary_words_with_their_rank() -> None:
    for name, rank in (("john", 1742), ("mary", 2676)):  # ids in SD 1.5's tokenizer/vocab.json
        report = check_token(name)
        assert report.whole_word and report.rank == rank and report.verdict == "common-word"
        assert not report.ok and f"rank {rank}" in report.message and "john" in report.message
        assert report.suggestions and all(check_token(s).ok for s in report.suggestions)


def test_rare_token_reports_its_pieces() -> None:
    report = check_token("anantn")  # the kohya_ss walkthrough's own token
    assert report.pieces == ("an", "ant", "n</w>") and report.ids == (514, 1103, 333)
    assert report.ok and report.verdict == "pieces" and "3 pieces" in report.message
    assert check_token("ohwx").verdict == "rare-word"  # one rare token, kohya users' favourite
    assert check_token("Anantn").pieces == report.pieces  # CLIP lower-cases


def test_common_word_inside_a_token_is_named() -> None:
    report = check_token("zwxstyle")
    assert report.common_pieces == ("style",) and "'style'" in report.message


def test_suggestions_avoid_common_words() -> None:
    for s in suggest_tokens("mary", 6):
        pieces, ids = tokenize(s)
        assert not (len(pieces) == 1 and ids[0] < 10_000)


def test_works_without_network(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lorakiln.data import token_check
    from lorakiln.models import clip_tokenizer

    for cached in (token_check._tokenizer, token_check._vocab, clip_tokenizer.bundled_clip_merges):
        cached.cache_clear()  # build the tokenizer again, now with the network cut
    assert check_token("mary").rank == 2676


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_token("  ")


def test_forms_of_common_words_are_not_rare() -> None:
    """`hells` is one token merged late (rank 47,989, next to ohwx's 47,993), yet plainly hell + s."""
    report = check_token("hells")
    assert report.whole_word and report.rank == 47_989 and report.stem == "hell" and report.stem_rank == 4141
    assert report.verdict == "common-word" and not report.ok and "'hell' (rank 4141)" in report.message
    assert "fine choice" not in report.message and report.suggestions
    for word, stem in (("bells", "bell"), ("shells", "shell")):
        assert check_token(word).stem == stem and not check_token(word).ok
    for rare in ("ohwx", "sks"):  # single rare tokens with no common stem stay rare
        assert check_token(rare).verdict == "rare-word" and check_token(rare).stem is None
    assert check_token("anantn").verdict == "pieces"  # split into sub-tokens: no prior meaning


def test_word_stems() -> None:
    from lorakiln.data.token_check import word_stems

    assert "hell" in word_stems("hells") and "lady" in word_stems("ladies") and "bake" in word_stems("baked")
    assert "run" in word_stems("running") and word_stems("sks") == [] and word_stems("ohwx") == []


def test_suggestions_are_not_forms_of_common_words() -> None:
    for s in suggest_tokens("hells", 6):
        assert check_token(s, suggest=0).ok and check_token(s, suggest=0).stem is None
