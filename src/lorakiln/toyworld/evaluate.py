"""Measure what the kohya_ss + AUTOMATIC1111 LoRA walkthrough judges by eye, on the toy world, with the detectors.

* **base accuracy**: does the base model draw the prompted shape and colour, especially for
  held-out pairs it never saw together (composition, not memory)?
* **likeness**: share of "a zwx" samples (LoRA applied) the detectors read as the concept —
  an orange star;
* **adaptability**: share of "a <colour> zwx on a <background> background" samples that take the
  new colour, keep the star shape *and* obey the prompted background (the kohya_ss walkthrough:
  "swapping out black hair for purple hair"; a LoRA that repaints the background is not adaptable);
* **drift**: how much fully specified prompts without the token ("a red circle on a grey
  background") change when the LoRA is applied, as the share of samples whose detected
  (shape, colour, background) changes, the mean absolute pixel change, and "base kept": the share
  of samples drawn right without the LoRA that stay right with it — same seeds with and without
  the LoRA (overfitting "smudges" the base model's other subjects);
* **ceilings**: the base model's own accuracy on what the concept is made of — trained orange
  shapes, and stars of the adaptability prompts' colours on their backgrounds. A LoRA cannot
  make the model draw an orange star more surely than it draws orange things or stars.

Every figure is a `Tally` (hits of trials) so a reader gets a Wilson 95 % interval with it; with
8–14 samples an interval spans ±30 points, with 64 about ±12. Every sample is generated through
`lorakiln.inference.generate` (the same code as `lorakiln generate`) with fixed seeds, so the
numbers are reproducible on a given machine. `SEED_SETS` are two disjoint seed ranges: a result
that holds on both is not one seed set's luck.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lorakiln.inference.infotext import GenerationParams
from lorakiln.toyworld.world import (
    COLOURS,
    CONCEPT,
    CONCEPT_TOKEN,
    SHAPES,
    backgrounds_for,
    describe,
    heldout_pairs,
    parse_caption,
    train_pairs,
)

#: Sampling settings for every measurement: the toy model's resolution, A1111's default sampler
#: (Euler a), 30 steps, CFG 5. With a deterministic sampler (DPM++ 2M, Euler, DDIM) a few seeds'
#: starting noise fails for every prompt (2 of seeds 7000–7007 drew nothing for 6 prompts: 75 %
#: right); the ancestral sampler's fresh noise each step recovers most of them (85 %). Seeds are
#: per image (A1111's seed, seed+1, …), so the batch size changes speed, not which images.
SAMPLING = GenerationParams(steps=30, sampler="Euler a", schedule_type="Automatic", cfg_scale=5.0, seed=1000,
                            width=64, height=64, batch_size=32)

#: Two disjoint seed ranges (each measurement uses at most a few hundred seeds from its start).
SEED_SETS: tuple[int, ...] = (1000, 5000)


@dataclass(frozen=True)
class Tally:
    """`hits` of `total` trials, with the Wilson score interval (Wilson 1927): unlike p ± 1.96·SE
    it stays inside [0, 1] and is honest at 0 % and 100 %, where most of these figures sit."""

    hits: int = 0
    total: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.hits + other.hits, self.total + other.total)

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else float("nan")

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        """The 95 % (z = 1.96) interval of the true rate."""
        if not self.total:
            return 0.0, 1.0
        n, p = self.total, self.hits / self.total
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)

    def __str__(self) -> str:
        lo, hi = self.wilson()
        return f"{self.rate:.0%} [{lo:.0%}–{hi:.0%}]" if self.total else "-"


@dataclass(frozen=True)
class Sample:
    prompt: str
    image: Any  # PIL.Image
    detection: Any  # toyworld.detect.Detection


#: One request of a measurement: (prompt, how many images, first seed).
Request = tuple[str, int, int]


def draw(bundle: Any, requests: Sequence[Request], *, lora_dir: str | Path | None = None,
         params: GenerationParams | None = None, loras: Any = None) -> list[list[Sample]]:
    """The samples of every request (seeds seed … seed+n-1 each), rendered together in batches of
    `params.batch_size` whatever their prompts (`inference.generate.generate_many`): a measurement
    asks many prompts a few seeds each. Embeddings in `lora_dir` (pivotal tuning's
    `<name>_emb.safetensors`) are used by file stem, as in A1111; `loras` (a `LoRASet`) keeps
    LoRA files loaded across calls."""
    from lorakiln.inference.generate import generate_many
    from lorakiln.toyworld.detect import detect

    items = [(prompt, seed + i) for prompt, n, seed in requests for i in range(n)]
    images = generate_many(bundle, params or SAMPLING, items, lora_dir=lora_dir, embeddings_dir=lora_dir,
                           loras=loras)
    out: list[list[Sample]] = []
    at = 0
    for prompt, n, _ in requests:
        out.append([Sample(prompt, item.image, detect(item.image)) for item in images[at:at + n]])
        at += n
    return out


def sample(bundle: Any, prompt: str, n: int, *, seed: int = SAMPLING.seed, lora_dir: str | Path | None = None,
           params: GenerationParams | None = None, loras: Any = None) -> list[Sample]:
    """`n` images of `prompt` (seeds seed … seed+n-1) with their detections."""
    return draw(bundle, [(prompt, n, seed)], lora_dir=lora_dir, params=params, loras=loras)[0]


def _tally(found: Sequence[Sample], **demand: str | None) -> Tally:
    return Tally(sum(s.detection.matches(**demand) for s in found), len(found))


def base_accuracy(bundle: Any, pairs: Sequence[tuple[str, str]] | None = None, n: int = 8,
                  seed: int = SAMPLING.seed) -> dict[str, Any]:
    """Share of "a <colour> <shape>" samples detected as that shape and colour (held-out pairs
    by default), overall and per pair."""
    pairs = list(pairs or heldout_pairs())
    found_all = draw(bundle, [(describe(shape, colour), n, seed) for shape, colour in pairs])
    per_pair: dict[str, float] = {}
    shape_ok = colour_ok = both = total = 0
    for (shape, colour), found in zip(pairs, found_all, strict=True):
        hits = [s.detection.matches(shape=shape, colour=colour) for s in found]
        per_pair[f"{colour} {shape}"] = sum(hits) / len(hits)
        shape_ok += sum(s.detection.shape == shape for s in found)
        colour_ok += sum(s.detection.colour == colour for s in found)
        both += sum(hits)
        total += len(found)
    return {"accuracy": both / total, "shape": shape_ok / total, "colour": colour_ok / total,
            "per_pair": per_pair, "samples": total}


def concept_word(lora: str, lora_dir: str | Path) -> str:
    """The word that calls the concept: the pivotal-tuning embedding's stem (`<lora>_emb`) when
    the run trained one (its captions' "zwx" became new tokens), else "zwx"."""
    emb = Path(lora_dir) / f"{lora}_emb.safetensors"
    return emb.stem if emb.is_file() else CONCEPT_TOKEN


#: Colours asked of the concept in the adaptability test: every colour but its own.
ADAPT_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c != CONCEPT[1])


def adapt_scenes(seed: int = SAMPLING.seed, colours: Sequence[str] = ADAPT_COLOURS) -> list[tuple[str, str]]:
    """(colour, background) asked of the concept: every colour, each on one of its allowed
    backgrounds, rotating with the seed so two seed sets ask for different backgrounds."""
    return [(c, backgrounds_for(c)[(i + seed // 1000) % len(backgrounds_for(c))]) for i, c in enumerate(colours)]


def drift_prompts(per_shape: int = 2) -> list[str]:
    """Base prompts for drift: `per_shape` trained pairs per shape (colours spread over the
    world, stars and orange things included: the concept's neighbours are where a LoRA bleeds),
    background named too. Every part of the scene is asked for, so a change in what the
    detectors read is the LoRA's doing, not the sampling seed's free choice of background
    shifting (a LoRA trained on beige/black/white/grey backgrounds moves unprompted backgrounds)."""
    trained = train_pairs()
    used: Counter[str] = Counter()
    prompts: list[str] = []
    for round_ in range(per_shape):
        for i, shape in enumerate(SHAPES):
            taken = {parse_caption(p)[1] for p in prompts if parse_caption(p)[0] == shape}
            colours = [c for s, c in trained if s == shape and c not in taken]
            colour = min(colours, key=lambda c: (used[c], list(COLOURS).index(c)))
            used[colour] += 1
            options = backgrounds_for(colour)
            prompts.append(describe(shape, colour, options[(i + 2 * round_) % len(options)]))
    return prompts


@dataclass
class Drift:
    """What the LoRA changed on the drift prompts (pairs of samples with the same seed)."""

    changed: Tally
    kept: Tally
    pixel: float
    #: prompt → how many of its samples the detectors read differently with the LoRA
    per_prompt: dict[str, int] = field(default_factory=dict)


class BaseSamples:
    """The base model's drift samples, drawn once and reused for every file and strength."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, int, int], list[Sample]] = {}

    def get(self, bundle: Any, requests: Sequence[Request], loras: Any = None) -> list[list[Sample]]:
        """`loras`: the caller's LoRA session, so that its hooked files are taken off for these."""
        missing = [r for r in requests if (id(bundle), *r) not in self._cache]
        for r, found in zip(missing, draw(bundle, missing, loras=loras) if missing else [], strict=True):
            self._cache[(id(bundle), *r)] = found
        return [self._cache[(id(bundle), *r)] for r in requests]


def _score_drift(prompts: Sequence[str], before: Sequence[list[Sample]], after: Sequence[list[Sample]]) -> Drift:
    changed = Tally()
    kept = Tally()
    pixel: list[float] = []
    per_prompt: dict[str, int] = {}
    for prompt, was, now in zip(prompts, before, after, strict=True):
        shape, colour, background = parse_caption(prompt)
        moved = 0
        for a, b in zip(was, now, strict=True):
            da, db = a.detection, b.detection
            moved += (da.shape, da.colour, da.background) != (db.shape, db.colour, db.background)
            if da.matches(shape=shape, colour=colour, background=background):
                kept += Tally(int(db.matches(shape=shape, colour=colour, background=background)), 1)
            pixel.append(float(np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean() / 255))
        changed += Tally(moved, len(was))
        per_prompt[prompt] = moved
    return Drift(changed, kept, float(np.mean(pixel)), per_prompt)


@dataclass
class Quality:
    """Every measure of one LoRA file at one strength on one seed set (or pooled: `+`)."""

    likeness: Tally
    adaptability: Tally
    adapt_colour: Tally  # the same without asking for a background
    drift: Drift

    def __add__(self, other: Quality) -> Quality:
        d, e = self.drift, other.drift
        pixel = (d.pixel * d.changed.total + e.pixel * e.changed.total) / max(1, d.changed.total + e.changed.total)
        per = Counter(d.per_prompt) + Counter(e.per_prompt)
        return Quality(self.likeness + other.likeness, self.adaptability + other.adaptability,
                       self.adapt_colour + other.adapt_colour,
                       Drift(d.changed + e.changed, d.kept + e.kept, pixel, {p: per[p] for p in d.per_prompt}))

    def score(self) -> float:
        """One number to rank files by: the mean of likeness, adaptability and base kept (what a
        user wants: the concept, obedient, and nothing else changed)."""
        return (self.likeness.rate + self.adaptability.rate + self.drift.kept.rate) / 3

    def to_json(self) -> dict[str, Any]:
        def t(x: Tally) -> dict[str, Any]:
            return {"hits": x.hits, "total": x.total, "rate": x.rate, "wilson95": list(x.wilson())}
        return {"likeness": t(self.likeness), "adaptability": t(self.adaptability),
                "adapt_colour": t(self.adapt_colour), "drift_changed": t(self.drift.changed),
                "base_kept": t(self.drift.kept), "drift_pixel": self.drift.pixel,
                "drift_per_prompt": self.drift.per_prompt, "score": self.score()}


def lora_quality(bundle: Any, lora: str, strength: float, lora_dir: str | Path, *, n: int = 32,
                 seed: int = SAMPLING.seed, base: BaseSamples | None = None,
                 drift_per_prompt: int = 3) -> Quality:
    """Every measure of one LoRA file at one strength, all from `seed` on:

    * likeness — `n` samples of "a zwx";
    * adaptability — about `n` samples (a whole number per colour) of "a <colour> zwx on a <bg>
      background", read as a star of that colour on that background; `adapt_colour` — one per
      colour without a background asked;
    * drift — `drift_per_prompt` samples of each drift prompt with and without the LoRA.

    The LoRA's prompts are rendered in one batched call, the file hooked in once."""
    from lorakiln.inference.generate import LoRASet

    tag = f"<lora:{lora}:{strength}>"
    word = concept_word(lora, lora_dir)
    shape, colour = CONCEPT
    per = -(-n // len(ADAPT_COLOURS))
    scenes = adapt_scenes(seed)
    prompts = drift_prompts()
    plain = [(p, drift_per_prompt, seed) for p in prompts]
    requests: list[Request] = [(f"{describe(word)} {tag}", n, seed)]
    requests += [(f"{describe(word, c, bg)} {tag}", per, seed) for c, bg in scenes]
    requests += [(f"{describe(word, c)} {tag}", 1, seed) for c, _ in scenes]
    requests += [(f"{p} {tag}", k, s) for p, k, s in plain]
    loras = LoRASet(bundle, lora_dir)
    try:
        before = (base or BaseSamples()).get(bundle, plain, loras=loras)
        found = draw(bundle, requests, lora_dir=lora_dir, loras=loras)
    finally:
        loras.close()
    k = len(scenes)
    adapt, colour_only, after = found[1:1 + k], found[1 + k:1 + 2 * k], found[1 + 2 * k:]
    return Quality(
        _tally(found[0], shape=shape, colour=colour),
        sum((_tally(f, shape=shape, colour=c, background=bg) for f, (c, bg) in zip(adapt, scenes, strict=True)),
            Tally()),
        sum((_tally(f, shape=shape, colour=c) for f, (c, _) in zip(colour_only, scenes, strict=True)), Tally()),
        _score_drift(prompts, before, after))


def likeness(bundle: Any, lora: str, strength: float, lora_dir: str | Path, n: int = 32,
             seed: int = SAMPLING.seed) -> Tally:
    """"a zwx" samples read as the concept (an orange star)."""
    found = sample(bundle, f"{describe(concept_word(lora, lora_dir))} <lora:{lora}:{strength}>", n, seed=seed,
                   lora_dir=lora_dir)
    return _tally(found, shape=CONCEPT[0], colour=CONCEPT[1])


def ceilings(bundle: Any, n: int = 32, seed: int = SAMPLING.seed) -> dict[str, Tally]:
    """The base model's accuracy on what the concept is made of, with the same prompts' form:

    * ``orange`` — "an orange <shape>" for every trained orange pair (likeness asks for orange);
    * ``star`` — "a <colour> star on a <bg> background", the adaptability prompts with the
      concept's class word (blue stars are held out: the base never saw them, so they are kept,
      as the LoRA is asked for a blue zwx too)."""
    orange = [s for s, c in train_pairs() if c == CONCEPT[1]]
    scenes = adapt_scenes(seed)
    per_shape, per_colour = -(-n // len(orange)), -(-n // len(scenes))
    found = draw(bundle, [(describe(s, CONCEPT[1]), per_shape, seed) for s in orange]
                 + [(describe(CONCEPT[0], c, bg), per_colour, seed) for c, bg in scenes])
    return {"orange": sum((_tally(f, shape=s, colour=CONCEPT[1]) for f, s in zip(found, orange, strict=False)),
                          Tally()),
            "star": sum((_tally(f, shape=CONCEPT[0], colour=c, background=bg)
                         for f, (c, bg) in zip(found[len(orange):], scenes, strict=True)), Tally())}
