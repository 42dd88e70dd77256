"""The toy world's vocabulary, scenes, captions and train / held-out / concept splits.

The world exists so that a text-to-image model small enough to train on a CPU can be trained
from scratch, taught a new concept with a LoRA, and *measured* with analytic detectors
(`detect.py`). Everything here is therefore chosen for one of two reasons: the detectors must
read it back reliably from blurry 64-px generations (so the shapes differ in rotation-
invariant ways and the colours are far apart in Lab), and the evaluation must be able to tell
memorisation from composition (so some shape–colour pairs are never trained on, and one pair
is reserved for the LoRA concept "zwx").

Everything is deterministic: scenes come from `random.Random(seed).random()` only, whose
output for a given seed Python guarantees across versions, and a scene list for `n` is a
prefix of the list for any larger `n` with the same seed and split.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

#: Shapes, in a fixed order. Rotation-invariant features separate them: the ring has a hole;
#: the heart is the only one without rotational symmetry (first radial harmonic); triangle,
#: square / cross and star have 3-, 4- and 5-fold symmetry, and the cross is far less solid
#: than the square; the circle has none of these. Diamond (= a rotated square) and hexagon
#: (≈ a circle once 22 px wide and blurred) were left out because they cannot be told apart.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "heart")

#: Shape colours (sRGB). The closest pair (blue / purple) is ≈45 ΔE apart in CIELAB, so a
#: generated image may drift a lot in colour before it reads as another name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (245, 220, 30),
    "green": (30, 160, 50),
    "blue": (30, 100, 230),
    "purple": (160, 40, 170),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

#: Background colours (sRGB). Deliberately muted so that any shape colour stands out.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "teal": (0, 110, 120),
    "beige": (225, 205, 160),
}

#: A colour is never drawn on a background closer than this in CIELAB ΔE*76: the shape
#: would be invisible to the viewer and to the foreground mask. This excludes exactly
#: white-on-white, black-on-black and white-on-beige (≈28 ΔE); the next closest allowed
#: combination is white on grey at ≈43 ΔE.
MIN_CONTRAST = 35.0

#: (shape, colour) pairs never generated for training: one per shape, each with a different
#: colour, so every shape and every colour still appears in training with other partners.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "purple"),
    ("square", "yellow"),
    ("triangle", "white"),
    ("star", "blue"),
    ("ring", "red"),
    ("cross", "black"),
    ("heart", "green"),
)

#: The LoRA concept: an orange star, called by the made-up token "zwx". The base world never
#: shows an orange star (neither in train nor in held-out), while stars and orange things
#: appear often, so the concept is a new *pairing* of known parts.
CONCEPT: tuple[str, str] = ("star", "orange")
CONCEPT_TOKEN = "zwx"

#: Size = diameter of the shape's circumscribed circle as a fraction of the image side. At least
#: 0.45 (29 px at 64 px): smaller blurred stars and crosses lose their points (docs/toyworld.md).
SIZE_RANGE: tuple[float, float] = (0.45, 0.75)
#: Minimum gap between the circumscribed circle and the image edge (fraction of the side),
#: so that the border pixels — where the detector reads the background — stay background.
EDGE_MARGIN = 0.04

#: Shapes whose look does not depend on rotation; their scenes always have rotation 0.
ROUND_SHAPES = frozenset({"circle", "ring"})
#: Scenes are upright unless asked for `rotate=True`. A U-Net at toy size on an 8×8 latent drew
#: freely rotated stars and crosses with the wrong number of arms and rounded rotated squares
#: into circles (28.6 % held-out accuracy, docs/toyworld.md); upright shapes are one template
#: each. The rotation is still drawn from the stream either way, so the rotated and upright
#: lists of one seed are the same scenes (the VAE trains on the rotated ones).

Split = Literal["train", "heldout", "all"]
T = TypeVar("T")


@dataclass(frozen=True)
class Scene:
    """One image of the world: a single shape of one colour on a plain background.

    `centre` is (x, y) as fractions of the image side (y down, like image rows); `rotation`
    is in degrees, counter-clockwise. `token`, when set, replaces the shape word in the
    caption (the LoRA concept); it does not change the image.
    """

    shape: str
    colour: str
    background: str
    size: float
    centre: tuple[float, float]
    rotation: float
    token: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields (the `scenes.jsonl` ground truth written with datasets)."""
        data = asdict(self)
        data["centre"] = list(self.centre)
        return data


def lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB colour with 0–255 channels: the space contrast is judged in."""
    linear = [(c / 255 / 12.92) if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    r, g, b = linear
    xyz = (
        (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
        0.2126 * r + 0.7152 * g + 0.0722 * b,
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
    )
    fx, fy, fz = (t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def contrast(colour: str, background: str) -> float:
    """ΔE*76 between a named shape colour and a named background."""
    a, b = lab(COLOURS[colour]), lab(BACKGROUNDS[background])
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def backgrounds_for(colour: str) -> tuple[str, ...]:
    """The backgrounds a `colour` shape may be drawn on (contrast ≥ `MIN_CONTRAST`)."""
    return tuple(b for b in BACKGROUNDS if contrast(colour, b) >= MIN_CONTRAST)


def all_pairs() -> tuple[tuple[str, str], ...]:
    """Every (shape, colour) pair: train + held-out + the concept."""
    return tuple((s, c) for s in SHAPES for c in COLOURS)


def heldout_pairs() -> tuple[tuple[str, str], ...]:
    """Pairs kept out of training, to measure composition of known words."""
    return HELDOUT_PAIRS


def train_pairs() -> tuple[tuple[str, str], ...]:
    """Pairs the base model is trained on: all but the held-out pairs and the concept."""
    excluded = set(HELDOUT_PAIRS) | {CONCEPT}
    return tuple(p for p in all_pairs() if p not in excluded)


def pairs_for(split: Split) -> tuple[tuple[str, str], ...]:
    """The (shape, colour) pairs a split samples from ("all" includes the concept)."""
    if split == "train":
        return train_pairs()
    if split == "heldout":
        return heldout_pairs()
    if split == "all":
        return all_pairs()
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def _pick(rng: random.Random, options: tuple[T, ...]) -> T:
    """A uniform choice that uses only `rng.random()` (stable across Python versions)."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _layout(rng: random.Random, shape: str, rotate: bool) -> tuple[float, tuple[float, float], float]:
    """Size, centre and rotation of one scene; the shape always fits inside the margins."""
    lo, hi = SIZE_RANGE
    size = round(lo + (hi - lo) * rng.random(), 4)
    half = size / 2 + EDGE_MARGIN
    cx = round(half + (1 - 2 * half) * rng.random(), 4)
    cy = round(half + (1 - 2 * half) * rng.random(), 4)
    rotation = round(360 * rng.random(), 2)
    if shape in ROUND_SHAPES or not rotate:
        rotation = 0.0
    return size, (cx, cy), rotation


def _scene(rng: random.Random, shape: str, colour: str, token: str | None = None, rotate: bool = False) -> Scene:
    background = _pick(rng, backgrounds_for(colour))
    size, centre, rotation = _layout(rng, shape, rotate)
    return Scene(shape, colour, background, size, centre, rotation, token)


def iter_scenes(seed: int, split: Split = "train", rotate: bool = False) -> Iterator[Scene]:
    """An endless deterministic stream of scenes from `split` (see `sample_scenes`)."""
    rng = random.Random(seed)
    pairs = pairs_for(split)
    while True:
        shape, colour = _pick(rng, pairs)
        yield _scene(rng, shape, colour, rotate=rotate)


def sample_scenes(n: int, seed: int, split: Split = "train", rotate: bool = False) -> list[Scene]:
    """`n` scenes with pairs drawn uniformly from `split`, backgrounds uniformly from those
    with enough contrast, size and position uniform; upright, or rotated uniformly in 0–360°
    with `rotate` (the same scenes otherwise). Same seed → same scenes."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    stream = iter_scenes(seed, split, rotate)
    return [next(stream) for _ in range(n)]


def concept_scenes(n: int, seed: int, colour: str | None = None, rotate: bool = False) -> list[Scene]:
    """`n` scenes of the concept shape (token "zwx"), in the concept colour by default.

    With `colour` (e.g. "green") the scenes are the adaptability test: the same shape in
    another colour, captioned "a green zwx on …". Backgrounds, size and position (and rotation
    with `rotate`) vary like the base world's so the LoRA learns the pairing, not one picture.
    """
    shape, default = CONCEPT
    colour = colour or default
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose from {', '.join(COLOURS)}")
    rng = random.Random(seed)
    return [_scene(rng, shape, colour, CONCEPT_TOKEN, rotate) for _ in range(n)]


def article(word: str) -> str:
    """English indefinite article: "an orange …", "a red …"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe(shape: str, colour: str | None = None, background: str | None = None,
             token: str | None = None) -> str:
    """The caption grammar, usable for prompts without a `Scene`.

    "a red circle on a grey background" / "a red circle" (no background) /
    "a zwx on a grey background" (token in its own colour) / "a green zwx on a teal background".
    The article agrees with the next word ("an orange square").
    """
    noun = token or shape
    if token is not None and colour == CONCEPT[1]:
        colour = None  # the token implies its own colour
    words = f"{colour} {noun}" if colour else noun
    text = f"{article(words)} {words}"
    if background:
        text += f" on {article(background)} {background} background"
    return text


def caption(scene: Scene, with_background: bool = True) -> str:
    """The caption of `scene` (grammar in `describe`)."""
    return describe(scene.shape, scene.colour, scene.background if with_background else None, scene.token)


_CAPTION_RE = re.compile(r"an? (?:(?P<colour>\w+) )?(?P<noun>\w+)(?: on an? (?P<background>\w+) background)?")


def parse_caption(text: str) -> tuple[str, str | None, str | None]:
    """(shape, colour, background) a caption or prompt asks for; `None` where unsaid.

    The concept token maps back to its shape, and to its colour when none is given, so an
    evaluation can compare "a green zwx" with what the detector reads. Raises `ValueError`
    for text outside the grammar.
    """
    match = _CAPTION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} does not follow the toy-world caption grammar")
    noun, colour, background = match["noun"], match["colour"], match["background"]
    if noun == CONCEPT_TOKEN:
        noun, colour = CONCEPT[0], colour or CONCEPT[1]
    if noun not in SHAPES or (colour is not None and colour not in COLOURS) or (
            background is not None and background not in BACKGROUNDS):
        raise ValueError(f"{text!r} names something outside the toy world")
    return noun, colour, background
