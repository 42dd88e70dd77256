"""The ``_emb.safetensors`` file: layout and metadata, diffusers as a real client (``load_textual_inversion``,
the diffusers advanced SDXL recipe's "Inference"), and the A1111 / ComfyUI embedding rules.

A1111 and ComfyUI are not installable, so their rules are written here from their documented behaviour (not
copied from their code) as two small functions, and the files are checked against them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_embeddings import CAPTIONS, two_encoders

from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1, tiny_tokenizer
from lorakiln.networks.pivotal import (
    PivotalEmbeddings,
    add_new_tokens,
    embeddings_path,
    load_embeddings,
    load_into_pipeline,
    save_embeddings,
)
from lorakiln.networks.pivotal.files import MD_ABSTRACTIONS, MD_KEYS, MD_TOKENS

#: An SDXL-like family record (two encoders), until the models package defines SDXL.
XL_LIKE = dataclasses.replace(SD1, name="xl_like", modelspec_lora_architecture="stable-diffusion-xl-v1-base/lora",
                              te_diffusers_prefixes=("text_encoder", "text_encoder_2"))
PROMPT = "a photo of <s0><s1>, red"


# -- client rules ----------------------------------------------------------------------------------


def a1111_vectors(data: dict[str, torch.Tensor], expected_width: int) -> int | None:
    """A1111 `create_embedding_from_data`: the vector count, None when skipped for its width.

    Accepts `string_to_param`, the SDXL pair (`clip_g` + `clip_l`, width 1280 + 768) or a
    single-key tensor dict; a dict with several other terms is an error.
    """
    if "string_to_param" in data:
        emb: Any = data["string_to_param"]["*"]  # type: ignore[index]
        width, n = emb.shape[-1], emb.shape[0]
    elif "clip_g" in data and "clip_l" in data:
        width = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
        n = data["clip_g"].shape[0]
    else:
        if len(data) != 1:
            raise ValueError("embedding file has multiple terms in it")
        emb = next(iter(data.values()))
        emb = emb.unsqueeze(0) if emb.ndim == 1 else emb
        width, n = emb.shape[-1], emb.shape[0]
    return n if width == expected_width else None


def comfy_embedding(data: dict[str, torch.Tensor], embedding_key: str, width: int) -> torch.Tensor | None:
    """ComfyUI `load_embed`: `string_to_param`, else the tokenizer's `embedding_key`, else the first
    value; None when the width does not match the encoder."""
    if "string_to_param" in data:
        emb: Any = next(iter(data["string_to_param"].values()))  # type: ignore[union-attr]
    elif embedding_key in data:
        emb = data[embedding_key]
    else:
        emb = next(iter(data.values()))
    return emb if emb.shape[-1] == width else None


# -- helpers ----------------------------------------------------------------------------------


def _ids(tokenizer: Any, text: str) -> torch.Tensor:
    return tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def trained(toks: list[Any], encs: list[Any], abstractions: str = "TOK", steps: int = 2) -> PivotalEmbeddings:
    """Add tokens and move them off their init with a few AdamW steps."""
    emb = add_new_tokens(toks, encs, abstractions, 2, seed=5)
    opt = torch.optim.AdamW(emb.parameters(), lr=0.1, weight_decay=0.01)
    texts = [emb.replace_abstractions(c) for c in CAPTIONS]
    for _ in range(steps):
        loss = sum(enc(_ids(tok, t))[0].pow(2).mean() for t in texts for tok, enc in zip(toks, encs, strict=True))
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        emb.after_optimizer_step()
        opt.zero_grad(set_to_none=True)
    return emb


@pytest.fixture(scope="module")
def sd1_trained() -> tuple[PivotalEmbeddings, Any, Any]:
    """The tiny SD1 model of `tiny_sd1_dir` (same seed) with trained `<s0><s1>`."""
    parts = build_tiny_sd1(None, seed=0)
    emb = trained([parts.tokenizer], [parts.text_encoder])
    return emb, parts.tokenizer, parts.text_encoder


@pytest.fixture
def pipe(tiny_sd1_dir: Path) -> Any:
    """A fresh tiny pipeline without the new tokens (loading embeddings mutates it)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, safety_checker=None, requires_safety_checker=False)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


# -- layout -----------------------------------------------------------------------------------


def test_sd1_file_layout_and_metadata(sd1_trained: tuple[PivotalEmbeddings, Any, Any], tmp_path: Path) -> None:
    emb = sd1_trained[0]
    path = embeddings_path(tmp_path / "tiny.safetensors")
    assert path.name == "tiny_emb.safetensors"
    assert save_embeddings(path, emb, family=SD1) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic write left no temp file
    sd = load_file(path)
    assert list(sd) == ["clip_l"]
    assert sd["clip_l"].dtype == torch.float32 and torch.equal(sd["clip_l"], emb.vectors(0))
    md = _metadata(path)
    assert all(isinstance(v, str) for v in md.values())
    assert md["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert md["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert md["modelspec.title"] == "tiny_emb" and md["modelspec.trigger_phrase"] == "<s0><s1>"
    assert json.loads(md[MD_TOKENS]) == ["<s0>", "<s1>"]
    assert json.loads(md[MD_ABSTRACTIONS]) == {"TOK": ["<s0>", "<s1>"]}
    assert json.loads(md[MD_KEYS]) == ["clip_l"]

    loaded = load_embeddings(path)
    assert loaded.tokens == ["<s0>", "<s1>"] and loaded.abstractions == {"TOK": ["<s0>", "<s1>"]}
    assert torch.equal(loaded.tensors["clip_l"], emb.vectors(0))

    half = save_embeddings(tmp_path / "half_emb.safetensors", emb, dtype=torch.float16)
    assert load_file(half)["clip_l"].dtype == torch.float16
    assert "modelspec.architecture" not in _metadata(half)  # unknown without a family


def test_one_file_per_abstraction(tmp_path: Path) -> None:
    toks, encs = two_encoders()
    emb = add_new_tokens(toks, encs, "TOK, STYLE", 2)
    path = save_embeddings(tmp_path / "style_emb.safetensors", emb, abstraction="STYLE")
    loaded = load_embeddings(path)
    assert loaded.tokens == ["<s2>", "<s3>"] and loaded.abstractions == {"STYLE": ["<s2>", "<s3>"]}
    assert torch.equal(loaded.tensors["clip_g"], emb.vectors(1)[2:])
    assert _metadata(path)["modelspec.trigger_phrase"] == "<s2><s3>"


# -- diffusers ----------------------------------------------------------------------------------


def test_sd1_loads_in_diffusers_as_the_seed_shows(sd1_trained: tuple[PivotalEmbeddings, Any, Any],
                                                   pipe: Any, tmp_path: Path) -> None:
    emb, tokenizer, encoder = sd1_trained
    sd = load_file(save_embeddings(tmp_path / "tiny_emb.safetensors", emb, family=SD1))
    pipe.load_textual_inversion(sd["clip_l"], token=["<s0>", "<s1>"], text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    ids = _ids(pipe.tokenizer, PROMPT)
    assert torch.equal(ids, _ids(tokenizer, PROMPT))  # diffusers' tokens get the training ids
    with torch.no_grad():
        theirs = pipe.text_encoder.get_input_embeddings()(ids)
        ours = encoder.get_input_embeddings()(ids)
        assert torch.equal(theirs, ours)
        assert torch.equal(theirs[0, 4:6], emb.vectors(0))
        prompt_embeds, _ = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, False)
        assert torch.allclose(prompt_embeds, encoder(ids)[0], atol=1e-6)


def test_sd1_file_path_under_any_token_name(sd1_trained: tuple[PivotalEmbeddings, Any, Any],
                                            pipe: Any, tmp_path: Path) -> None:
    """The single-key file loads by path like any diffusers TI, as a multi-vector token."""
    emb = sd1_trained[0]
    path = save_embeddings(tmp_path / "tiny_emb.safetensors", emb)
    pipe.load_textual_inversion(str(path), token="tiny_emb")
    assert pipe.maybe_convert_prompt("a photo of tiny_emb", pipe.tokenizer) == "a photo of tiny_emb tiny_emb_1"
    ids = pipe.tokenizer.convert_tokens_to_ids(["tiny_emb", "tiny_emb_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), emb.vectors(0))


def test_two_encoders_export_clip_l_and_clip_g_and_load_per_encoder(tmp_path: Path) -> None:
    from diffusers.loaders import TextualInversionLoaderMixin

    toks, encs = two_encoders(legacy_eos=True)  # the real SDXL configs' ids: pooling is fixed on both sides
    emb = trained(toks, encs)
    path = save_embeddings(tmp_path / "xl_emb.safetensors", emb, family=XL_LIKE)
    sd = load_file(path)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    md = _metadata(path)
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    assert load_embeddings(path).keys == ["clip_l", "clip_g"]  # encoder order, not file order

    class Host(TextualInversionLoaderMixin):
        """What the loader reads of a pipeline; SDXL pipelines use this same mixin."""

        hf_device_map = None
        components: dict[str, Any] = {}

    fresh_toks, fresh_encs = two_encoders(legacy_eos=True)  # the same seeds, without the new tokens
    host = Host()
    host.tokenizer, host.tokenizer_2 = fresh_toks
    host.text_encoder, host.text_encoder_2 = fresh_encs
    assert load_into_pipeline(host, path, XL_LIKE.te_diffusers_prefixes) == ["<s0>", "<s1>"]
    with torch.no_grad():
        for i in range(2):
            ids = _ids(fresh_toks[i], PROMPT)
            assert torch.equal(ids, _ids(toks[i], PROMPT))
            assert torch.equal(fresh_encs[i].get_input_embeddings()(ids), encs[i].get_input_embeddings()(ids))
            assert torch.equal(fresh_encs[i](ids)[0], encs[i](ids)[0])
        assert torch.equal(fresh_encs[1](ids).text_embeds, encs[1](ids).text_embeds)  # SDXL pooled


# -- A1111 / ComfyUI rules at the real widths ---------------------------------------------------


def _real_width_encoder(hidden: int, heads: int, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    torch.manual_seed(0)
    return cls(CLIPTextConfig(vocab_size=len(tiny_tokenizer()), hidden_size=hidden, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=heads, projection_dim=32))


@pytest.fixture(scope="module")
def real_width_encoders() -> list[Any]:
    """1-layer CLIP-L (768) and CLIP-G (1280) widths: only the table width matters here."""
    return [_real_width_encoder(768, 12, False), _real_width_encoder(1280, 20, True)]


def test_sd1_file_satisfies_a1111_comfyui_rules(real_width_encoders: list[Any], tmp_path: Path) -> None:
    emb = add_new_tokens([tiny_tokenizer()], [copy.deepcopy(real_width_encoders[0])], "TOK", 2)
    sd = load_file(save_embeddings(tmp_path / "sd1_emb.safetensors", emb, family=SD1))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"clip_l": (2, 768)}
    assert a1111_vectors(sd, expected_width=768) == 2  # A1111 SD1: single-key "diffuser concepts"
    comfy = comfy_embedding(sd, "clip_l", 768)  # ComfyUI SD1 tokenizer key
    assert comfy is not None and torch.equal(comfy, emb.vectors(0))
    # Why exactly one key: an alias next to clip_l (e.g. kohya's emb_params) breaks A1111.
    with pytest.raises(ValueError, match="multiple terms"):
        a1111_vectors({**sd, "emb_params": sd["clip_l"]}, expected_width=768)


def test_two_encoder_file_satisfies_a1111_comfyui_rules(real_width_encoders: list[Any], tmp_path: Path) -> None:
    encs = [copy.deepcopy(e) for e in real_width_encoders]
    emb = add_new_tokens([tiny_tokenizer(), tiny_tokenizer()], encs, "TOK", 2)
    sd = load_file(save_embeddings(tmp_path / "xl_emb.safetensors", emb, family=XL_LIKE))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    assert a1111_vectors(sd, expected_width=768 + 1280) == 2  # A1111 SDXL pair
    for i, (key, width) in enumerate((("clip_l", 768), ("clip_g", 1280))):
        picked = comfy_embedding(sd, key, width)  # each ComfyUI SDXL tokenizer takes its own key
        assert picked is not None and torch.equal(picked, emb.vectors(i))


# -- damaged files --------------------------------------------------------------------------------

BROKEN = Path(__file__).resolve().parents[1] / "fixtures" / "broken"


@pytest.mark.parametrize(("name", "says"), [("truncated-data", "truncated file"), ("header-not-json", "not JSON"),
                                            ("pickle", "Python pickle"), ("nan-embedding", "NaN")])
def test_a_damaged_embeddings_file_is_refused_naming_it(name: str, says: str, tmp_path: Path) -> None:
    """The shared checks, not the safetensors library's text (or NaN vectors loaded silently)."""
    from lorakiln.errors import FileFormatError

    path = tmp_path / f"{name}_emb.safetensors"
    path.write_bytes((BROKEN / f"{name}.safetensors").read_bytes())
    with pytest.raises(FileFormatError, match=says) as err:
        load_embeddings(path)
    assert str(err.value).startswith(f"{path}:")


def test_embeddings_metadata_that_is_not_json_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from lorakiln.errors import FileFormatError

    path = tmp_path / "x_emb.safetensors"
    save_file({"clip_l": torch.zeros(2, 32)}, str(path), metadata={MD_TOKENS: "<s0>, <s1>"})
    with pytest.raises(FileFormatError, match=f"{MD_TOKENS} is '<s0>, <s1>', not the JSON list"):
        load_embeddings(path)
