"""The toy world's vocabulary, splits, captions and rendering are fixed and deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lorakiln.toyworld.render as render_module
from lorakiln.toyworld.render import degrade, render
from lorakiln.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    CONCEPT,
    CONCEPT_TOKEN,
    MIN_CONTRAST,
    SHAPES,
    SIZE_RANGE,
    Scene,
    all_pairs,
    backgrounds_for,
    caption,
    concept_scenes,
    contrast,
    describe,
    heldout_pairs,
    parse_caption,
    sample_scenes,
    train_pairs,
)


def test_splits_partition_all_pairs() -> None:
    train, heldout = set(train_pairs()), set(heldout_pairs())
    assert len(all_pairs()) == len(SHAPES) * len(COLOURS)
    assert train | heldout | {CONCEPT} == set(all_pairs())
    assert not train & heldout and CONCEPT not in train | heldout
    assert 0.1 <= len(heldout) / len(all_pairs()) <= 0.2
    # every shape and every colour is still trained on, with other partners
    assert {s for s, _ in train} == set(SHAPES)
    assert {c for _, c in train} == set(COLOURS)


def test_sampling_is_deterministic_and_respects_splits() -> None:
    train = sample_scenes(400, seed=3)
    assert train == sample_scenes(400, seed=3)
    assert train != sample_scenes(400, seed=4)
    assert sample_scenes(10, seed=3) == train[:10]  # a shorter list is a prefix
    pairs = {(s.shape, s.colour) for s in train}
    assert pairs <= set(train_pairs()) and pairs == set(train_pairs())  # all 48 pairs appear in 400 draws
    heldout = sample_scenes(100, seed=3, split="heldout")
    assert {(s.shape, s.colour) for s in heldout} <= set(heldout_pairs())
    with pytest.raises(ValueError, match="split"):
        sample_scenes(1, 0, split="test")  # type: ignore[arg-type]


def test_scenes_fit_the_image_and_have_contrast() -> None:
    for scene in sample_scenes(300, seed=1, split="all"):
        assert SIZE_RANGE[0] <= scene.size <= SIZE_RANGE[1]
        for c in scene.centre:
            assert scene.size / 2 <= c <= 1 - scene.size / 2
        assert contrast(scene.colour, scene.background) >= MIN_CONTRAST
        if scene.shape in ("circle", "ring"):
            assert scene.rotation == 0
    assert "white" not in backgrounds_for("white") and "beige" not in backgrounds_for("white")
    assert "black" not in backgrounds_for("black")
    assert all(len(backgrounds_for(c)) >= 3 for c in COLOURS)


def test_no_colour_equals_a_background_it_is_drawn_on() -> None:
    for colour, background in itertools.product(COLOURS, BACKGROUNDS):
        if background in backgrounds_for(colour):
            assert COLOURS[colour] != BACKGROUNDS[background]


def test_caption_grammar() -> None:
    scene = Scene("circle", "red", "grey", 0.5, (0.5, 0.5), 0.0)
    assert caption(scene) == "a red circle on a grey background"
    assert caption(scene, with_background=False) == "a red circle"
    assert describe("square", "orange", "white") == "an orange square on a white background"
    assert describe("star", "orange", "teal", token=CONCEPT_TOKEN) == "a zwx on a teal background"
    assert describe("star", "green", "grey", token=CONCEPT_TOKEN) == "a green zwx on a grey background"


def test_scenes_are_upright_unless_rotated_and_otherwise_the_same() -> None:
    from dataclasses import replace

    upright = sample_scenes(200, seed=7, split="all")
    rotated = sample_scenes(200, seed=7, split="all", rotate=True)
    assert all(s.rotation == 0 for s in upright)
    assert sum(s.rotation != 0 for s in rotated) > 100  # all but circles and rings
    assert [replace(s, rotation=0.0) for s in rotated] == upright
    concept = concept_scenes(10, seed=0, rotate=True)
    assert [replace(s, rotation=0.0) for s in concept] == concept_scenes(10, seed=0)


def test_concept_scenes() -> None:
    scenes = concept_scenes(20, seed=0)
    assert scenes == concept_scenes(20, seed=0)
    assert {(s.shape, s.colour, s.token) for s in scenes} == {(*CONCEPT, CONCEPT_TOKEN)}
    assert len({s.background for s in scenes}) > 1 and len({s.size for s in scenes}) == 20
    assert all(caption(s) == f"a zwx on a {s.background} background" for s in scenes)
    green = concept_scenes(5, seed=0, colour="green")
    assert all(s.shape == CONCEPT[0] and caption(s).startswith("a green zwx on a") for s in green)
    with pytest.raises(ValueError, match="colour"):
        concept_scenes(1, 0, colour="pink")


def test_parse_caption_inverts_describe() -> None:
    for scene in sample_scenes(50, seed=2, split="all") + concept_scenes(5, 2) + concept_scenes(5, 2, "blue"):
        assert parse_caption(caption(scene)) == (scene.shape, scene.colour, scene.background)
    assert parse_caption("a zwx") == (CONCEPT[0], CONCEPT[1], None)
    assert parse_caption("a star") == ("star", None, None)
    with pytest.raises(ValueError):
        parse_caption("a pink circle")


def test_render_size_mode_and_determinism() -> None:
    scene = sample_scenes(1, seed=5)[0]
    image = render(scene)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert render(scene, size=32).size == (32, 32)
    assert render(scene).tobytes() == image.tobytes()
    noisy = render(scene, jitter=6, noise=4.0, seed=1)
    assert noisy.tobytes() == render(scene, jitter=6, noise=4.0, seed=1).tobytes() != image.tobytes()
    assert degrade(image, 3).tobytes() == degrade(image, 3).tobytes()
    # the corners are background, the centre of a filled shape is its colour
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == BACKGROUNDS[scene.background]


def test_render_draws_every_shape_centred() -> None:
    for shape in SHAPES:
        scene = Scene(shape, "red", "grey", 0.6, (0.5, 0.5), 30.0)
        pixels = np.asarray(render(scene)).astype(int)
        is_red = np.abs(pixels - np.array(COLOURS["red"])).sum(-1) < 10
        ys, xs = np.nonzero(is_red)
        assert is_red.sum() > 300, shape
        assert abs(xs.mean() - 31.5) < 4 and abs(ys.mean() - 31.5) < 4, shape
        assert is_red[32, 32] != (shape == "ring"), shape
    assert set(render_module.OUTLINES) | {"circle", "ring"} == set(SHAPES)
