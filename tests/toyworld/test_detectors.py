"""The analytic detectors read shape, colour and background back from clean and degraded renders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lorakiln.toyworld.detect import Detection, classify_shape, detect, srgb_to_lab
from lorakiln.toyworld.render import degrade, render
from lorakiln.toyworld.world import BACKGROUNDS, COLOURS, SHAPES, Scene, concept_scenes, lab, sample_scenes


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return sample_scenes(140, seed=123, split="all", rotate=True)  # the harder case


def _accuracy(scenes: list[Scene], found: list[Detection]) -> dict[str, float]:
    n = len(scenes)
    return {"shape": sum(s.shape == d.shape for s, d in zip(scenes, found, strict=True)) / n,
            "colour": sum(s.colour == d.colour for s, d in zip(scenes, found, strict=True)) / n,
            "background": sum(s.background == d.background for s, d in zip(scenes, found, strict=True)) / n}


def test_clean_accuracy(scenes: list[Scene]) -> None:
    found = [detect(render(s)) for s in scenes]
    accuracy = _accuracy(scenes, found)
    assert min(accuracy.values()) >= 0.98, accuracy  # measured: 100 % on 600 scenes
    assert {d.shape for d in found} == set(SHAPES)


def test_degraded_accuracy(scenes: list[Scene]) -> None:
    """Blur 1 px, σ=8 noise, ±8 colour cast, JPEG q75 (`DEFAULT_DEGRADE`)."""
    found = [detect(degrade(render(s), i)) for i, s in enumerate(scenes)]
    accuracy = _accuracy(scenes, found)
    assert min(accuracy.values()) >= 0.95, accuracy  # measured: 100 % on 600 scenes


def test_heavily_degraded_accuracy(scenes: list[Scene]) -> None:
    """Blur 2 px, σ=12, ±16 cast, JPEG q50: blurrier than the brief's target."""
    found = [detect(degrade(render(s), i, blur=2.0, noise=12, shift=16, jpeg_quality=50))
             for i, s in enumerate(scenes)]
    accuracy = _accuracy(scenes, found)
    assert min(accuracy.values()) >= 0.9, accuracy  # measured: ≥ 99 % on 600 scenes


def test_none_when_there_is_no_clear_shape() -> None:
    for name, rgb in BACKGROUNDS.items():
        blank = detect(Image.new("RGB", (64, 64), rgb))
        assert (blank.shape, blank.colour, blank.background) == ("none", "none", name)
        assert blank.confidence == 0 and not blank.matches(shape="circle")
    noise = np.random.default_rng(0).normal(128, 8, size=(64, 64, 3)).clip(0, 255).astype(np.uint8)
    assert detect(noise).shape == "none"
    speck = np.full((64, 64, 3), 128, np.uint8)
    speck[30:33, 30:33] = COLOURS["red"]  # 9 px: below 1 % of the image
    assert detect(speck).shape == "none"
    big = np.full((64, 64, 3), 128, np.uint8)
    big[6:58, 6:58] = COLOURS["red"]  # 66 % of the image: larger than any scene's shape
    assert detect(big).shape == "none"


def test_concept_and_recoloured_concept() -> None:
    for scene in concept_scenes(8, seed=1) + concept_scenes(8, seed=1, colour="green"):
        found = detect(degrade(render(scene), 7))
        assert found.matches(shape="star", colour=scene.colour, background=scene.background), found


def test_inputs_arrays_and_other_sizes() -> None:
    scene = Scene("triangle", "blue", "beige", 0.6, (0.45, 0.55), 12.0)
    image = render(scene)
    as_uint8 = detect(np.asarray(image))
    as_float = detect(np.asarray(image, dtype=np.float32) / 255)
    assert as_uint8.shape == as_float.shape == "triangle" and as_uint8.colour == as_float.colour == "blue"
    big = detect(render(scene, size=128))
    assert big.matches("triangle", "blue", "beige") and big.confidence > 0.5
    assert abs(big.features["centre_x"] - 0.45) < 0.05 and abs(big.features["centre_y"] - 0.55) < 0.05


def test_confidence_is_high_on_clean_renders(scenes: list[Scene]) -> None:
    confidences = [detect(render(s)).confidence for s in scenes[:40]]
    assert min(confidences) > 0.2 and float(np.median(confidences)) > 0.5


def test_classify_shape_rules() -> None:
    base = {"hole": 0.0, "h2": 0.0, "h3": 0.0, "h4": 0.0, "h5": 0.0}
    assert classify_shape(base)[0] == "circle"
    assert classify_shape({**base, "hole": 0.25})[0] == "ring"
    assert classify_shape({**base, "h2": 0.16, "h3": 0.2})[0] == "heart"
    assert classify_shape({**base, "h3": 0.27})[0] == "triangle"
    assert classify_shape({**base, "h4": 0.13})[0] == "square"
    assert classify_shape({**base, "h4": 0.39})[0] == "cross"
    assert classify_shape({**base, "h5": 0.3})[0] == "star"


def test_lab_matches_the_world_definition() -> None:
    for rgb in list(COLOURS.values()) + list(BACKGROUNDS.values()):
        assert np.allclose(srgb_to_lab(np.array(rgb)), lab(rgb), atol=0.05)
