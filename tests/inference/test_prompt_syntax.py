"""A1111 prompt syntax: extra-network tags (``extra_networks.py``) and parse_prompt_attention's documented examples."""

from __future__ import annotations

import pytest

from lorakiln.errors import ConfigError
from lorakiln.inference.prompt_syntax import extract_extra_networks, parse_prompt_attention

SEED_PROMPT = "a portrait of anantn, red hair, handsome face, oil painting, artstation, <lora:last:1.0>"


def test_seed_prompt_tag() -> None:
    text, calls = extract_extra_networks(SEED_PROMPT)
    # A1111's parse_prompt only cuts the tag; the trailing ", " stays.
    assert text == "a portrait of anantn, red hair, handsome face, oil painting, artstation, "
    assert [(c.kind, c.name, c.te, c.unet, c.dyn) for c in calls] == [("lora", "last", 1.0, 1.0, None)]
    assert extract_extra_networks(SEED_PROMPT, tidy=True)[0] == (
        "a portrait of anantn, red hair, handsome face, oil painting, artstation")


@pytest.mark.parametrize(
    ("tag", "te", "unet", "dyn"),
    [
        ("<lora:n:0.8>", 0.8, 0.8, None),
        ("<lora:n:0.8:0.5>", 0.8, 0.5, None),
        ("<lora:n:0.8:0.5:16>", 0.8, 0.5, 16),
        ("<lora:n>", 1.0, 1.0, None),
        ("<lora:n:te=0.3>", 0.3, 0.3, None),
        ("<lora:n:unet=0.4>", 1.0, 0.4, None),
        ("<lora:n:0.9:unet=0.2:dyn=8>", 0.9, 0.2, 8),
        ("<lora:n:te=0.5:0.7>", 0.5, 0.5, None),  # positional 0.7 is the TE slot, te= wins
    ],
)
def test_lora_multipliers(tag: str, te: float, unet: float, dyn: int | None) -> None:
    _, (call,) = extract_extra_networks(f"x {tag}")
    assert (call.name, call.te, call.unet, call.dyn) == ("n", te, unet, dyn)


def test_other_kinds_and_order() -> None:
    text, calls = extract_extra_networks("<hypernet:anime:0.6>a, <lora:a:0.5>, b <lyco:c:1>")
    assert [(c.kind, c.name) for c in calls] == [("hypernet", "anime"), ("lora", "a"), ("lyco", "c")]
    assert text == "a, , b "
    assert extract_extra_networks("<hypernet:anime:0.6>a, <lora:a:0.5>, b <lyco:c:1>", tidy=True)[0] == "a, b"


def test_bad_multiplier() -> None:
    _, (call,) = extract_extra_networks("<lora:n:strong>")
    with pytest.raises(ConfigError, match="te multiplier"):
        _ = call.te


def test_not_a_tag() -> None:
    assert extract_extra_networks("a <b> c <:x>") == ("a <b> c <:x>", [])


# A1111 modules/prompt_parser.py parse_prompt_attention docstring examples.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
         [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
          ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
        ("a (very beautiful:1.3) (house)", [("a ", 1.0), ("very beautiful", 1.3), (" ", 1.0), ("house", 1.1)]),
    ],
)
def test_a1111_documented_examples(text: str, expected: list[tuple[str, float]]) -> None:
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_square_nesting_break_and_edge_cases() -> None:
    assert parse_prompt_attention("[[x]]") == [("x", pytest.approx(1 / 1.21))]
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_prompt_attention("") == [("", 1.0)]
    assert parse_prompt_attention("ratio 16:9 x)") == [("ratio 16:9 x)", 1.0)]  # stray ':' and ')'
    assert parse_prompt_attention("(a:0.5") == [("a:0.5", 1.1)]  # no closer: ':' is text
    assert parse_prompt_attention("\\\\ok") == [("\\ok", 1.0)]
