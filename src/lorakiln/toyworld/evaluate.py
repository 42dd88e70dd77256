"""Measure what the kohya_ss + AUTOMATIC1111 LoRA walkthrough judges by eye, on the toy world, with the detectors.

* **base accuracy**: does the base model draw the prompted shape and colour, especially for
  held-out pairs it never saw together (composition, not memory)?
* **likeness**: share of "a zwx" samples (LoRA applied) the detectors read as the concept —
  an orange star;
* **adaptability**: share of "a <colour> zwx" samples that take the new colour *and* keep the
  star shape (the kohya_ss walkthrough: "swapping out black hair for purple hair");
* **drift**: how much fully specified prompts without the token ("a red circle on a grey
  background") change when the LoRA is applied, as the share of samples whose detected
  (shape, colour, background) changes, the mean absolute pixel change, and the share of
  samples drawn right without the LoRA that stay right with it — same seeds with and without
  the LoRA (overfitting "smudges" the base model's other subjects).

Every sample is generated through `lorakiln.inference.generate` (the same code as `lorakiln
generate`), with fixed seeds, so the numbers are reproducible on a given machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
#: right); the ancestral sampler's fresh noise each step recovers most of them (85 %).
SAMPLING = GenerationParams(steps=30, sampler="Euler a", schedule_type="Automatic", cfg_scale=5.0, seed=1000,
                            width=64, height=64, batch_size=8)


@dataclass(frozen=True)
class Sample:
    prompt: str
    image: Any  # PIL.Image
    detection: Any  # toyworld.detect.Detection


def sample(bundle: Any, prompt: str, n: int, *, seed: int = SAMPLING.seed, lora_dir: str | Path | None = None,
           params: GenerationParams | None = None) -> list[Sample]:
    """`n` images of `prompt` (seeds seed … seed+n-1) with their detections. Embeddings in
    `lora_dir` (pivotal tuning's `<name>_emb.safetensors`) are used by file stem, as in A1111."""
    from lorakiln.inference.generate import generate
    from lorakiln.toyworld.detect import detect

    params = params or SAMPLING
    batch = max(1, min(params.batch_size, n))
    count = -(-n // batch)
    items = generate(bundle, replace(params, prompt=prompt, seed=seed, batch_size=batch, batch_count=count),
                     lora_dir=lora_dir, embeddings_dir=lora_dir)[:n]
    return [Sample(prompt, item.image, detect(item.image)) for item in items]


def base_accuracy(bundle: Any, pairs: Sequence[tuple[str, str]] | None = None, n: int = 8,
                  seed: int = SAMPLING.seed) -> dict[str, Any]:
    """Share of "a <colour> <shape>" samples detected as that shape and colour (held-out pairs
    by default), overall and per pair."""
    pairs = list(pairs or heldout_pairs())
    per_pair: dict[str, float] = {}
    shape_ok = colour_ok = both = total = 0
    for shape, colour in pairs:
        found = sample(bundle, describe(shape, colour), n, seed=seed)
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


def likeness(bundle: Any, lora: str, strength: float, lora_dir: str | Path, n: int = 16,
             seed: int = SAMPLING.seed) -> float:
    """Share of "a zwx" samples read as the concept (an orange star)."""
    shape, colour = CONCEPT
    word = concept_word(lora, lora_dir)
    found = sample(bundle, f"{describe(word)} <lora:{lora}:{strength}>", n, seed=seed, lora_dir=lora_dir)
    return sum(s.detection.matches(shape=shape, colour=colour) for s in found) / len(found)


#: Colours asked of the concept in the adaptability test: every colour but its own.
ADAPT_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c != CONCEPT[1])


def adaptability(bundle: Any, lora: str, strength: float, lora_dir: str | Path, n: int = 4,
                 seed: int = SAMPLING.seed, colours: Sequence[str] = ADAPT_COLOURS) -> float:
    """Share of "a <colour> zwx" samples detected as a star of that colour."""
    shape = CONCEPT[0]
    word = concept_word(lora, lora_dir)
    hits = total = 0
    for colour in colours:
        found = sample(bundle, f"{describe(word, colour)} <lora:{lora}:{strength}>", n, seed=seed,
                       lora_dir=lora_dir)
        hits += sum(s.detection.matches(shape=shape, colour=colour) for s in found)
        total += len(found)
    return hits / total


def drift_prompts() -> list[str]:
    """Base prompts for drift: one trained pair per shape (colours differing), background named too. Every part of
    the scene is asked for, so a change in what the detectors read is the LoRA's doing, not the
    sampling seed's free choice of background shifting (a LoRA trained on beige/black/white/grey
    backgrounds moves unprompted backgrounds toward those)."""
    trained = train_pairs()
    prompts: list[str] = []
    used: set[str] = set()
    for i, shape in enumerate(SHAPES):  # a different colour for each shape where the world allows
        colours = [c for s, c in trained if s == shape]
        colour = next((c for c in colours if c not in used), colours[0])
        used.add(colour)
        options = backgrounds_for(colour)
        prompts.append(describe(shape, colour, options[i % len(options)]))
    return prompts


def drift(bundle: Any, lora: str, strength: float, lora_dir: str | Path, n: int = 4,
          seed: int = SAMPLING.seed) -> dict[str, float]:
    """How much prompts without the token change with the LoRA applied (same seeds): the share
    of samples whose detected (shape, colour, background) changes, the mean absolute pixel
    change, and the share of samples drawn right without the LoRA that stay right with it."""
    changed = total = right = kept = 0
    pixel = []
    for prompt in drift_prompts():
        shape, colour, background = parse_caption(prompt)
        before = sample(bundle, prompt, n, seed=seed)
        after = sample(bundle, f"{prompt} <lora:{lora}:{strength}>", n, seed=seed, lora_dir=lora_dir)
        for a, b in zip(before, after, strict=True):
            da, db = a.detection, b.detection
            changed += (da.shape, da.colour, da.background) != (db.shape, db.colour, db.background)
            if da.matches(shape=shape, colour=colour, background=background):
                right += 1
                kept += db.matches(shape=shape, colour=colour, background=background)
            pixel.append(float(np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean() / 255))
            total += 1
    return {"changed": changed / total, "pixel": float(np.mean(pixel)), "kept": kept / right if right else 1.0}


def lora_quality(bundle: Any, lora: str, strength: float, lora_dir: str | Path, *, n: int = 16) -> dict[str, float]:
    """Likeness, adaptability and drift of one LoRA file at one strength."""
    d = drift(bundle, lora, strength, lora_dir, n=max(2, n // 4))
    return {"likeness": likeness(bundle, lora, strength, lora_dir, n=n),
            "adaptability": adaptability(bundle, lora, strength, lora_dir, n=max(2, n // 4)),
            "drift": d["changed"], "drift_pixel": d["pixel"], "base_kept": d["kept"]}
