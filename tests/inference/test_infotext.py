"""A1111 infotext: the kohya_ss walkthrough's block, round trips, quoting, real-world keys, PNG chunk."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lorakiln.errors import ConfigError
from lorakiln.inference.infotext import (
    GenerationParams,
    format_infotext,
    parse_infotext,
    png_info,
    read_png_infotext,
)

# The kohya_ss + AUTOMATIC1111 LoRA walkthrough, "Testing": pasted into A1111 with the blue arrow.
SEED_BLOCK = """\
a portrait of anantn, red hair, handsome face, oil painting, artstation, <lora:last:1.0>
Negative prompt: ugly, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, extra limbs, disfigured, deformed, watermark, signature, bad art, blurry, blurred
Steps: 35, Sampler: Euler a, CFG scale: 7, Seed: 363423421, Size: 512x512"""

# An A1111 1.10 style line: hashes, model name, clip skip, quoted Lora hashes, version.
REAL_WORLD = """\
masterpiece, 1girl, (red scarf:1.2), <lora:last:0.8>
Negative prompt: lowres, bad hands
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, \
Lora hashes: "last: 1a2b3c4d5e6f, other: 0f9e8d7c6b5a", Version: v1.10.1"""


def test_seed_block_parses() -> None:
    p = parse_infotext(SEED_BLOCK)
    assert p.prompt == ("a portrait of anantn, red hair, handsome face, oil painting, artstation, "
                        "<lora:last:1.0>")
    assert p.negative_prompt.startswith("ugly, poorly drawn hands")
    assert p.negative_prompt.endswith("blurry, blurred")
    assert (p.steps, p.sampler, p.cfg_scale, p.seed, p.width, p.height) == (
        35, "Euler a", 7.0, 363423421, 512, 512)
    assert p.schedule_type is None  # pre-1.9 text: the sampler name alone decides
    assert p.clip_skip == 1 and p.batch_size == 1 and p.extra == {}


def test_seed_block_text_round_trip() -> None:
    assert format_infotext(parse_infotext(SEED_BLOCK)) == SEED_BLOCK


def test_real_world_line() -> None:
    p = parse_infotext(REAL_WORLD)
    assert p.sampler == "DPM++ 2M" and p.schedule_type == "Karras"
    assert p.cfg_scale == 6.5 and (p.width, p.height) == (512, 768) and p.clip_skip == 2
    assert p.extra == {
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Lora hashes": "last: 1a2b3c4d5e6f, other: 0f9e8d7c6b5a",
        "Version": "v1.10.1",
    }
    assert format_infotext(p) == REAL_WORLD


def test_object_round_trip_with_everything() -> None:
    p = GenerationParams(
        prompt="line one\nline two, (x:1.2)",
        negative_prompt="bad\nworse",
        steps=12, sampler="DPM++ SDE", schedule_type="Exponential", cfg_scale=4.25, seed=7,
        width=640, height=384, clip_skip=2, batch_size=3, batch_count=4,
        extra={"Version": "lorakiln 0.1.0", "Lora hashes": "a: 1234, b: 5678", "Note": 'say "hi"\nbye',
               "Model hash": "abc"},
    )
    text = format_infotext(p)
    assert parse_infotext(text) == p
    line = text.splitlines()[-1]
    assert line.startswith("Steps: 12, Sampler: DPM++ SDE, Schedule type: Exponential, CFG scale: 4.25")
    assert line.endswith("Version: lorakiln 0.1.0")  # Version always last, as in A1111
    assert 'Lora hashes: "a: 1234, b: 5678"' in line


def test_defaults_round_trip() -> None:
    assert parse_infotext(format_infotext(GenerationParams())) == GenerationParams()


def test_quoted_value_with_commas_and_escapes() -> None:
    p = parse_infotext('x\nSteps: 5, Lora hashes: "a: 1234, b: 5678", Wild: "q\\"uote, x", Seed: 3')
    assert p.extra == {"Lora hashes": "a: 1234, b: 5678", "Wild": 'q"uote, x'}
    assert p.seed == 3


def test_block_without_negative_prompt() -> None:
    text = "a cat\non a mat\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 768x512"
    p = parse_infotext(text)
    assert p.prompt == "a cat\non a mat" and p.negative_prompt == ""
    assert (p.sampler, p.cfg_scale, p.width, p.height) == ("Euler", 7.5, 768, 512)
    assert format_infotext(p) == text


def test_multiline_negative_prompt() -> None:
    p = parse_infotext("pos\nNegative prompt: one\ntwo\nSteps: 1, Seed: 2, Size: 64x64")
    assert (p.prompt, p.negative_prompt) == ("pos", "one\ntwo")


def test_prompt_only_gets_ui_defaults() -> None:
    # Fewer than 3 pairs on the last line: A1111 treats it as prompt text.
    p = parse_infotext("a photo, style: film")
    assert p == GenerationParams(prompt="a photo, style: film")
    assert (p.steps, p.sampler, p.schedule_type, p.cfg_scale, p.seed) == (20, "DPM++ 2M", "Automatic", 7.0, -1)


def test_bad_number_is_config_error() -> None:
    with pytest.raises(ConfigError, match="Steps"):
        parse_infotext("x\nSteps: many, Seed: 1, Size: 8x8")


def test_png_chunk_round_trip(tmp_path: Path) -> None:
    p = parse_infotext(REAL_WORLD)
    path = tmp_path / "out.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(p))
    text = read_png_infotext(path)
    assert text == REAL_WORLD and parse_infotext(text) == p
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_png_infotext(tmp_path / "plain.png") is None
