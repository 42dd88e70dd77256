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
    """A generator that draws what the prompt says; "zwx" is drawn as an orange star if learned."""
    from lorakiln.inference.generate import GeneratedImage
    from lorakiln.toyworld.render import render

    def generate(bundle, params, lora_dir=None, embeddings_dir=None, **kw):
        text = re.sub(r"<lora:[^>]+>", "", params.prompt).strip()
        lora = "<lora:" in params.prompt
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
        out = []
        for i in range(params.batch_count * params.batch_size):
            scene = Scene(shape, colour or "red", background, 0.6, (0.5, 0.5), 10.0 * i)
            out.append(GeneratedImage(render(scene, 64), params))
        return out

    return generate


@pytest.mark.parametrize(("learned", "obeys", "drifts", "expected"), [
    (True, True, False, (1.0, 1.0, 0.0)),
    (True, False, True, (1.0, 0.0, 1.0)),
    (False, True, False, (0.0, 0.0, 0.0)),
])
def test_scores_follow_what_was_drawn(monkeypatch, tmp_path: Path, learned, obeys, drifts, expected) -> None:
    import lorakiln.inference.generate as gen

    monkeypatch.setattr(gen, "generate", _fake_generate(learned, obeys, drifts))
    q = evaluate.lora_quality(object(), "last", 1.0, tmp_path, n=4)
    assert (q["likeness"], q["adaptability"], q["drift"]) == expected
    assert (q["drift_pixel"] > 0) == drifts
    assert q["base_kept"] == (0.0 if drifts else 1.0)


def test_drift_prompts_name_every_part_of_the_scene() -> None:
    from lorakiln.toyworld.world import SHAPES, parse_caption

    parsed = [parse_caption(p) for p in evaluate.drift_prompts()]
    assert sorted(shape for shape, _, _ in parsed) == sorted(SHAPES)
    assert all(colour and background for _, colour, background in parsed)


def test_base_accuracy_and_pivotal_word(monkeypatch, tmp_path: Path) -> None:
    import lorakiln.inference.generate as gen

    monkeypatch.setattr(gen, "generate", _fake_generate(True, True, False))
    report = evaluate.base_accuracy(object(), n=2)
    assert report["accuracy"] == 1.0 and len(report["per_pair"]) == 7
    assert evaluate.concept_word("last", tmp_path) == "zwx"
    (tmp_path / "last_emb.safetensors").write_bytes(b"")
    assert evaluate.concept_word("last", tmp_path) == "last_emb"
    assert evaluate.likeness(object(), "last", 1.0, tmp_path, n=2) == 1.0


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
