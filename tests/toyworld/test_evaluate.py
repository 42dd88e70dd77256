"""The quality measures' scoring, with a stand-in generator that renders the prompted scene
(so the expected scores are known), and the pretraining recipe running a few steps on CPU."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lorakiln.toyworld import evaluate
from lorakiln.toyworld.world import CONCEPT, Scene


def _fake_generate(concept_learned: bool, obeys_colour: bool, drifts: bool):
    """A `generate_many` that draws what each prompt says; "zwx" is an orange star if learned."""
    from dataclasses import replace

    from lorakiln.inference.generate import GeneratedImage
    from lorakiln.toyworld.render import render

    def draw_one(prompt: str, seed: int) -> Scene:
        text = re.sub(r"<lora:[^>]+>", "", prompt).strip()
        lora = "<lora:" in prompt
        text, _, background = text.partition(" background")[0].partition(" on ")
        background = background.split()[-1] if background else "grey"
        words = text.split()[1:]  # drop the article
        colour, noun = (words[0], words[1]) if len(words) > 1 else (None, words[0])
        if noun in ("zwx", "last_emb"):
            shape = CONCEPT[0] if concept_learned else "circle"
            colour = colour if (colour and obeys_colour) else CONCEPT[1]
        else:
            shape = noun
            if lora and drifts:
                shape = "square" if shape != "square" else "circle"
        return Scene(shape, colour or "red", background, 0.6, (0.5, 0.5), 10.0 * (seed % 7))

    def generate_many(bundle, params, items, lora_dir=None, embeddings_dir=None, **kw):
        return [GeneratedImage(render(draw_one(p, s), 64), replace(params, prompt=p, seed=s)) for p, s in items]

    return generate_many


@pytest.mark.parametrize(("learned", "obeys", "drifts", "expected"), [
    (True, True, False, (1.0, 1.0, 0.0)),
    (True, False, True, (1.0, 0.0, 1.0)),
    (False, True, False, (0.0, 0.0, 0.0)),
])
def test_scores_follow_what_was_drawn(monkeypatch, tmp_path: Path, learned, obeys, drifts, expected) -> None:
    import lorakiln.inference.generate as gen

    monkeypatch.setattr(gen, "generate_many", _fake_generate(learned, obeys, drifts))
    q = evaluate.lora_quality(object(), "last", 1.0, tmp_path, n=4, drift_per_prompt=1)
    assert (q.likeness.rate, q.adaptability.rate, q.drift.changed.rate) == expected
    assert q.likeness.total == 4 and q.adaptability.total == 7  # one per colour, rounded up
    assert q.drift.changed.total == len(evaluate.drift_prompts())
    assert (q.drift.pixel > 0) == drifts
    assert q.drift.kept.rate == (0.0 if drifts else 1.0)
    assert sum(q.drift.per_prompt.values()) == q.drift.changed.hits
    pooled = q + q
    assert pooled.likeness.total == 8 and pooled.drift.kept.rate == q.drift.kept.rate
    assert pooled.drift.per_prompt == {p: 2 * c for p, c in q.drift.per_prompt.items()}


def test_wilson_intervals_match_the_published_values() -> None:
    """Wilson score intervals at 95 % (z = 1.96), as tabulated e.g. by Newcombe (1998)."""
    cases = {(0, 10): (0.0, 0.2775), (10, 10): (0.7225, 1.0), (5, 10): (0.2366, 0.7634), (81, 263): (0.2553, 0.3662)}
    for (hits, total), (lo, hi) in cases.items():
        got = evaluate.Tally(hits, total).wilson()
        assert got == pytest.approx((lo, hi), abs=5e-4)
    assert evaluate.Tally(0, 0).wilson() == (0.0, 1.0)
    assert str(evaluate.Tally(16, 32)) == "50% [34%–66%]"
    assert (evaluate.Tally(1, 4) + evaluate.Tally(2, 4)) == evaluate.Tally(3, 8)


def test_drift_prompts_name_every_part_of_the_scene() -> None:
    from lorakiln.toyworld.world import SHAPES, backgrounds_for, parse_caption, train_pairs

    prompts = evaluate.drift_prompts()
    parsed = [parse_caption(p) for p in prompts]
    assert len(prompts) >= 10 and len(set(prompts)) == len(prompts)
    assert sorted(shape for shape, _, _ in parsed) == sorted(SHAPES * 2)
    assert all((shape, colour) in train_pairs() for shape, colour, _ in parsed)
    assert all(background in backgrounds_for(colour) for _, colour, background in parsed)
    assert evaluate.drift_prompts(1) == prompts[:len(SHAPES)]


def test_adaptability_asks_each_colour_on_an_allowed_background_per_seed_set() -> None:
    from lorakiln.toyworld.world import backgrounds_for

    first, second = (evaluate.adapt_scenes(s) for s in evaluate.SEED_SETS)
    assert [c for c, _ in first] == list(evaluate.ADAPT_COLOURS) == [c for c, _ in second]
    assert all(bg in backgrounds_for(c) for c, bg in first + second)
    assert first != second  # the two seed sets ask for different backgrounds


def test_base_accuracy_ceilings_and_pivotal_word(monkeypatch, tmp_path: Path) -> None:
    import lorakiln.inference.generate as gen

    monkeypatch.setattr(gen, "generate_many", _fake_generate(True, True, False))
    report = evaluate.base_accuracy(object(), n=2)
    assert report["accuracy"] == 1.0 and len(report["per_pair"]) == 7
    ceilings = evaluate.ceilings(object(), n=12)
    assert ceilings["orange"].rate == 1.0 and ceilings["orange"].total >= 12
    assert ceilings["star"].rate == 1.0 and ceilings["star"].total == 14
    assert evaluate.concept_word("last", tmp_path) == "zwx"
    (tmp_path / "last_emb.safetensors").write_bytes(b"")
    assert evaluate.concept_word("last", tmp_path) == "last_emb"
    assert evaluate.likeness(object(), "last", 1.0, tmp_path, n=2).rate == 1.0


def test_pretraining_recipe_runs_a_few_steps(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    from lorakiln.models.loading import load_base_model
    from lorakiln.toyworld.pretrain import PretrainPlan, pretrain

    plan = PretrainPlan(images=16, vae_steps=2, vae_batch=4, steps=2, batch_size=4, warmup_steps=0,
                        save_every_n_steps=1000)
    out = pretrain(tmp_path / "work", tmp_path / "toy.safetensors", plan, log=None)
    bundle = load_base_model(str(out))
    assert bundle.unet.config.cross_attention_dim == 64 and bundle.vae.config.scaling_factor != 1.0
    assert len(bundle.tokenizers[0]) == 49408  # the real CLIP tokenizer
    assert (tmp_path / "work" / "run" / "toy_config.toml").is_file()
    ceiling = json.loads((tmp_path / "work" / "vae_report.json").read_text())["reconstruction"]
    assert set(ceiling) == {"shape", "colour", "both"} and all(0 <= v <= 1 for v in ceiling.values())


class _FakeVae(torch.nn.Module):
    """encode → decode is the identity (a perfect VAE) or a flat grey image (a useless one)."""

    def __init__(self, perfect: bool) -> None:
        super().__init__()
        self.perfect = perfect

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z if self.perfect else torch.zeros_like(z))


def test_reconstruction_accuracy_is_the_detectors_on_decoded_scenes() -> None:
    from lorakiln.toyworld.vae import reconstruction_accuracy

    assert reconstruction_accuracy(_FakeVae(True), n=40) == {"shape": 1.0, "colour": 1.0, "both": 1.0}
    assert reconstruction_accuracy(_FakeVae(False), n=40)["both"] == 0.0
