"""`lorakiln generate`: A1111 parameters in, PNGs with infotext out; LoRAs, embeddings, emphasis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lorakiln.cli import main
from lorakiln.errors import LorakilnError
from lorakiln.inference.generate import generate, generate_many, save_images
from lorakiln.inference.infotext import GenerationParams, format_infotext, parse_infotext, read_png_infotext
from lorakiln.models.family import SD1
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.networks.export import save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import create_lora_network

FAST = GenerationParams(prompt="photo of zwx", steps=3, sampler="Euler a", cfg_scale=7, seed=7,
                        width=64, height=64, schedule_type=None)


@pytest.fixture(scope="module")
def bundle():
    return build_tiny_sd1_bundle(seed=0)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    source = build_tiny_sd1_bundle(seed=0)
    net = create_lora_network(source.unet, source.text_encoders, SD1, dim=4, alpha=4)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen))
    save_kohya_lora(net, folder / "zwx.safetensors", build_metadata(TrainingInfo(output_name="zwx"), net))
    net.remove()
    return folder


def _pixels(items) -> np.ndarray:
    return np.stack([np.asarray(i.image) for i in items])


def test_lora_tag_changes_the_image_and_is_removed_after(bundle, lora_dir: Path) -> None:
    base = _pixels(generate(bundle, FAST))
    with_lora = _pixels(generate(bundle, replace(FAST, prompt="photo of zwx <lora:zwx:1>"), lora_dir=lora_dir))
    zero = _pixels(generate(bundle, replace(FAST, prompt="photo of zwx <lora:zwx:0>"), lora_dir=lora_dir))
    assert not np.array_equal(base, with_lora)
    assert np.array_equal(_pixels(generate(bundle, FAST)), base)  # hooks gone after the call
    assert np.array_equal(zero, base)  # strength 0: the base model's image, bit for bit


def test_same_seed_same_image_and_batches_step_the_seed(bundle) -> None:
    a = generate(bundle, replace(FAST, batch_size=2))
    b = generate(bundle, replace(FAST, batch_count=2))
    assert [i.params.seed for i in a] == [7, 8] == [i.params.seed for i in b]
    # same seeds → same images (batched matmuls may differ in the last bits, as in A1111)
    assert np.abs(_pixels(a).astype(int) - _pixels(b).astype(int)).max() <= 2


def test_many_prompts_in_one_batch_give_each_prompts_own_images(bundle, lora_dir: Path) -> None:
    """`generate_many` (the evaluations' batched path): each image is the one `generate` draws
    for its prompt and seed alone, and its infotext names its own prompt."""
    tag = " <lora:zwx:0.8>"
    items = [("photo of zwx" + tag, 7), ("a red toy" + tag, 11), ("photo of zwx" + tag, 8)]
    many = generate_many(bundle, replace(FAST, batch_size=2), items, lora_dir=lora_dir)
    alone = [generate(bundle, replace(FAST, prompt=p, seed=s), lora_dir=lora_dir)[0] for p, s in items]
    assert [(i.params.prompt, i.params.seed) for i in many] == items
    assert np.abs(_pixels(many).astype(int) - _pixels(alone).astype(int)).max() <= 2
    assert not np.array_equal(_pixels(many[:1]), _pixels(many[1:2]))
    with pytest.raises(LorakilnError, match="same <lora"):
        generate_many(bundle, FAST, [("photo of zwx" + tag, 1), ("photo of zwx", 2)], lora_dir=lora_dir)


def test_png_infotext_round_trip_reproduces_the_image(bundle, tmp_path: Path) -> None:
    first = generate(bundle, replace(FAST, negative_prompt="blurry", prompt="photo of (zwx:1.3), toy"))
    path = save_images(first, tmp_path)[0]
    assert path.name == "00000-7.png"
    params = parse_infotext(read_png_infotext(path))
    assert params.prompt == "photo of (zwx:1.3), toy" and params.negative_prompt == "blurry"
    again = generate(bundle, params)
    assert np.array_equal(_pixels(first), _pixels(again))
    assert save_images(again, tmp_path)[0].name == "00001-7.png"  # numbering continues


def test_emphasis_changes_conditioning_and_weight_one_does_not(bundle) -> None:
    from lorakiln.inference.pipeline import build_pipeline
    from lorakiln.inference.weighting import encode_prompt

    pipe = build_pipeline(bundle)
    plain, _ = encode_prompt(pipe, bundle, "photo of zwx")
    one, _ = encode_prompt(pipe, bundle, "photo of (zwx:1.0)")
    more, _ = encode_prompt(pipe, bundle, "photo of (zwx:1.5)")
    torch.testing.assert_close(plain, one)
    assert not torch.allclose(plain, more)


def test_embedding_found_by_stem(bundle, tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    save_file({"clip_l": torch.randn(2, 32) * 0.02}, str(folder / "zwxstyle.safetensors"))
    fresh = build_tiny_sd1_bundle(seed=0)
    out = generate(fresh, replace(FAST, prompt="photo in zwxstyle"), embeddings_dir=folder)
    assert len(out) == 1 and "zwxstyle" in fresh.tokenizers[0].get_vocab()
    again = generate(fresh, replace(FAST, prompt="photo in zwxstyle"), embeddings_dir=folder)  # grid cells
    assert np.array_equal(_pixels(out), _pixels(again))


def test_same_stem_from_another_folder_means_that_file(tmp_path: Path) -> None:
    """Two pivotal runs both save `zwx_emb`: comparing them in one session (a bench, the UI)
    must encode each run's prompt with its own vectors, not the first folder's."""
    from lorakiln.inference.embeddings import load_embeddings
    from lorakiln.inference.pipeline import build_pipeline
    from lorakiln.inference.weighting import encode_prompt

    first, second, third = (tmp_path / n for n in ("run1", "run2", "run3"))
    vectors = {first: torch.randn(2, 32) * 0.02, second: torch.randn(2, 32) * 0.02, third: torch.randn(3, 32)}
    for folder, tensor in vectors.items():
        folder.mkdir()
        save_file({"clip_l": tensor}, str(folder / "zwx_emb.safetensors"))
    fresh = build_tiny_sd1_bundle(seed=0)
    pipe = build_pipeline(fresh)
    table = fresh.text_encoders[0].get_input_embeddings().weight
    ids = fresh.tokenizers[0].convert_tokens_to_ids
    load_embeddings(pipe, fresh, {"zwx_emb": first / "zwx_emb.safetensors"})
    one, _ = encode_prompt(pipe, fresh, "a zwx_emb")
    load_embeddings(pipe, fresh, {"zwx_emb": second / "zwx_emb.safetensors"})
    torch.testing.assert_close(table[ids(["zwx_emb", "zwx_emb_1"])], vectors[second])
    two, _ = encode_prompt(pipe, fresh, "a zwx_emb")
    assert not torch.allclose(one, two)
    load_embeddings(pipe, fresh, {"zwx_emb": first / "zwx_emb.safetensors"})  # back to the first run
    torch.testing.assert_close(encode_prompt(pipe, fresh, "a zwx_emb")[0], one)
    with pytest.raises(LorakilnError, match="has 3 vectors but 'zwx_emb' was loaded with 2"):
        load_embeddings(pipe, fresh, {"zwx_emb": third / "zwx_emb.safetensors"})
    save_file({"clip_l": torch.zeros(1, 32)}, str(tmp_path / "port.safetensors"))  # a piece of the vocab
    with pytest.raises(LorakilnError, match="'port' is already a token"):
        load_embeddings(pipe, fresh, {"port": tmp_path / "port.safetensors"})


def test_a_lora_named_like_the_trigger_word_is_not_an_embedding(tmp_path: Path) -> None:
    """The quickstart's output folder: zwx.safetensors (a LoRA) and zwx_emb, prompt "a zwx"."""
    from lorakiln.inference.embeddings import find_embeddings

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(tmp_path / "zwx.safetensors"))
    save_file({"clip_l": torch.zeros(2, 32)}, str(tmp_path / "zwx_emb.safetensors"))
    found = find_embeddings(["a zwx zwx_emb <lora:zwx:1>"], tmp_path)
    assert found == {"zwx_emb": tmp_path / "zwx_emb.safetensors"}


def test_errors_name_the_missing_thing(bundle, lora_dir: Path) -> None:
    with pytest.raises(LorakilnError, match="LoRA 'nope' not found .* available: zwx"):
        generate(bundle, replace(FAST, prompt="a <lora:nope:1>"), lora_dir=lora_dir)
    from lorakiln.errors import ConfigError

    with pytest.raises(ConfigError, match="Euler a"):
        generate(bundle, replace(FAST, sampler="Eulr a"))


def test_cli_generate_writes_pngs(tmp_path: Path, lora_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path / "home"))
    block = ("photo of zwx, <lora:zwx:0.8>\nNegative prompt: ugly\n"
             "Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 363423421, Size: 64x64")
    code = main(["generate", "--model", "tiny:sd1", "--params", block, "--lora-dir", str(lora_dir),
                 "--batch-size", "2", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    paths = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in paths] == ["00000-363423421.png", "00001-363423422.png"]
    text = Image.open(paths[1]).text["parameters"]
    assert "Seed: 363423422" in text and "Sampler: DPM++ 2M" in text and "<lora:zwx:0.8>" in text
    # A1111's `Lora hashes`: the first 12 hex digits of the hash kohya stores as sshs_model_hash.
    with safe_open(str(lora_dir / "zwx.safetensors"), "pt") as fh:
        short = fh.metadata()["sshs_model_hash"][:12]
    assert f'Lora hashes: "zwx: {short}"' in text, text


def test_lora_hashes_name_only_the_loras_of_this_prompt(bundle, lora_dir: Path) -> None:
    pasted = replace(FAST, extra={"Lora hashes": '"old: 000000000000"'})  # from an earlier image
    (image,) = generate(bundle, pasted)
    assert "Lora hashes" not in image.params.extra
    (image,) = generate(bundle, replace(pasted, prompt="photo of zwx <lora:zwx:0.5>"), lora_dir=lora_dir)
    assert image.params.extra["Lora hashes"].startswith("zwx: ") and len(image.params.extra["Lora hashes"]) == 17


def test_ti_hashes_name_the_embeddings_of_this_prompt(bundle, tmp_path: Path) -> None:
    """A1111's `TI hashes`: `name: <first 12 hex of the SHA-256 of the whole file>` for each
    embedding the prompts use, positive prompt first (A1111 `sd_hijack_clip.py`); a pasted one is
    replaced, and dropped when the prompt uses none."""
    import hashlib

    folder = tmp_path / "emb"
    folder.mkdir()
    for stem in ("zwxstyle", "badhand", "unused"):
        save_file({"clip_l": torch.randn(1, 32) * 0.02}, str(folder / f"{stem}.safetensors"))
    short = {stem: hashlib.sha256((folder / f"{stem}.safetensors").read_bytes()).hexdigest()[:12]
             for stem in ("zwxstyle", "badhand")}
    pasted = replace(FAST, prompt="photo in zwxstyle", negative_prompt="badhand, blurry",
                     extra={"TI hashes": '"old: 000000000000"'})
    (image,) = generate(build_tiny_sd1_bundle(seed=0), pasted, embeddings_dir=folder)
    assert image.params.extra["TI hashes"] == f"zwxstyle: {short['zwxstyle']}, badhand: {short['badhand']}"
    assert f'TI hashes: "zwxstyle: {short["zwxstyle"]}, badhand: {short["badhand"]}"' in format_infotext(image.params)
    (image,) = generate(bundle, replace(pasted, prompt="photo", negative_prompt=""), embeddings_dir=folder)
    assert "TI hashes" not in image.params.extra


def test_sdxl_generate_with_its_own_lora(tmp_path: Path) -> None:
    from lorakiln.models.family import SDXL
    from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle

    xl = build_tiny_sdxl_bundle(seed=0)
    net = create_lora_network(xl.unet, xl.text_encoders, SDXL, dim=2, alpha=2)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.normal_(std=0.5)
    save_kohya_lora(net, tmp_path / "xl.safetensors", build_metadata(TrainingInfo(output_name="xl"), net))
    net.remove()
    base = _pixels(generate(xl, FAST))
    styled = _pixels(generate(xl, replace(FAST, prompt="photo of zwx <lora:xl:1>"), lora_dir=tmp_path))
    assert base.shape == (1, 64, 64, 3) and not np.array_equal(base, styled)
    with pytest.raises(LorakilnError, match="for sdxl"):  # an SDXL LoRA on SD1 is refused by name
        generate(build_tiny_sd1_bundle(seed=0), replace(FAST, prompt="a <lora:xl:1>"), lora_dir=tmp_path)
