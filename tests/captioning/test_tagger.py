"""WD14 tagging with a tiny colour-reading ONNX model: preprocessing, selection, formatting, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from captioning_support import WD14_SIZE, MakeImage, build_tiny_wd14
from PIL import Image

from lorakiln.captioning.files import OutputOptions
from lorakiln.captioning.tagger import (
    TaggerOptions,
    WD14Tagger,
    display_name,
    load_tagger,
    parse_tag_list,
    preprocess,
    tag_images,
)
from lorakiln.errors import ConfigError, LorakilnError, ModelLoadError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def tagger(tiny_wd14_dir: Path) -> WD14Tagger:
    return load_tagger(str(tiny_wd14_dir), device="cpu")


def _tags(tagger: WD14Tagger, color: tuple[int, int, int], size: tuple[int, int] = (16, 16), **options: object) -> str:
    return tagger.caption([Image.new("RGB", size, color)], TaggerOptions(**options))[0]  # type: ignore[arg-type]


def test_preprocess_is_bgr_padded_on_white() -> None:
    wide = Image.new("RGB", (16, 8), RED)
    array = preprocess(wide, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.float32
    assert np.all(array[:4] == 255) and np.all(array[12:] == 255)  # 4 white rows above and below
    assert np.all(array[4:12] == np.array([0, 0, 255], np.float32))  # red is channel 2 in BGR
    tall = preprocess(Image.new("RGB", (4, 12), BLUE), 6)  # padded to 12×12, then shrunk by area
    assert tall.shape == (6, 6, 3)
    assert np.allclose(tall[:, :, 0], 255)  # blue everywhere (white has blue too)
    assert np.allclose(tall.mean(axis=(0, 1)), [255, 255 * 2 / 3, 255 * 2 / 3], atol=0.5)
    assert np.allclose(preprocess(Image.new("RGB", (2, 2), GREEN), 8), [0, 255, 0])  # enlarged, still BGR


def test_red_fires_the_red_tags_through_bgr(tagger: WD14Tagger) -> None:
    # long_hair reads channel 2 of the model input; only BGR order puts red there
    assert _tags(tagger, RED) == "long hair, solo, hatsune miku"
    assert _tags(tagger, BLUE) == "blue sky"
    assert _tags(tagger, GREEN) == "^_^"


def test_thresholds(tagger: WD14Tagger) -> None:
    assert _tags(tagger, RED, general_threshold=0.7) == "long hair, hatsune miku"  # solo is .62
    assert _tags(tagger, RED, character_threshold=0.9) == "long hair, solo"  # hatsune_miku is .88
    assert _tags(tagger, RED, general_threshold=0.05, character_threshold=0.95) == "long hair, solo, ^_^"


def test_excluded_tags_with_underscores_or_spaces(tagger: WD14Tagger) -> None:
    assert _tags(tagger, RED, exclude_tags=("long_hair",)) == "solo, hatsune miku"
    assert _tags(tagger, RED, exclude_tags=parse_tag_list("Long Hair, hatsune miku")) == "solo"


def test_underscores_and_kaomoji(tagger: WD14Tagger) -> None:
    assert _tags(tagger, RED, replace_underscores=False) == "long_hair, solo, hatsune_miku"
    assert display_name("^_^") == "^_^" and display_name("||_||") == "||_||" and display_name(">_<") == ">_<"
    assert display_name("long_hair") == "long hair" and display_name("long_hair", False) == "long_hair"


def test_rating_only_when_asked_and_first(tagger: WD14Tagger) -> None:
    assert "general" not in _tags(tagger, RED)
    assert _tags(tagger, RED, include_rating=True) == "general, long hair, solo, hatsune miku"
    assert _tags(tagger, BLUE, include_rating=True) == "explicit, blue sky"


def test_order_prefix_postfix_and_separator(tagger: WD14Tagger) -> None:
    assert _tags(tagger, RED, sort_by_confidence=True) == "long hair, hatsune miku, solo"
    assert _tags(tagger, RED, prefix="zwx") == "zwx, long hair, solo, hatsune miku"
    assert _tags(tagger, RED, prefix="zwx, ", postfix="masterpiece") == "zwx, long hair, solo, hatsune miku, masterpiece"
    assert _tags(tagger, BLUE, tag_separator=" | ", prefix="zwx") == "zwx | blue sky"


def test_white_padding_of_non_square_images(tagger: WD14Tagger) -> None:
    # a 2:1 red picture padded with white has channel means B=G=.5, R=1: ^_^ (G) fires, blue_sky (B) not;
    # stretched it would stay pure red, padded with black long_hair would weaken.
    assert _tags(tagger, RED, size=(WD14_SIZE, WD14_SIZE // 2)) == "long hair, solo, ^_^, hatsune miku"
    assert _tags(tagger, RED, size=(64, 32)) == "long hair, solo, ^_^, hatsune miku"  # padded, then resized


def test_tag_images_writes_files_in_kohya_folders(tiny_wd14_dir: Path, tmp_path: Path, make_image: MakeImage) -> None:
    root = tmp_path / "train"
    make_image(root / "10_zwx" / "red.png", (32, 32), RED)
    make_image(root / "10_zwx" / "blue.webp", (20, 20), BLUE)
    make_image(root / "10_zwx" / "broken.jpg", broken=True)
    (root / "10_zwx" / "blue.txt").write_text("hand-written\n", encoding="utf-8")
    options = TaggerOptions(model=str(tiny_wd14_dir), prefix="zwx", batch_size=4)
    summary = tag_images(root, options, OutputOptions(progress=False))
    assert (root / "10_zwx" / "red.txt").read_text(encoding="utf-8") == "zwx, long hair, solo, hatsune miku\n"
    assert (root / "10_zwx" / "blue.txt").read_text(encoding="utf-8") == "hand-written\n"
    assert [p.name for p in summary.kept] == ["blue.webp"] and summary.failed[0][0].name == "broken.jpg"

    summary = tag_images(root, options, OutputOptions(overwrite=True, caption_extension=".tags", progress=False))
    assert (root / "10_zwx" / "blue.tags").read_text(encoding="utf-8") == "zwx, blue sky\n"
    assert len(summary.written) == 2


def test_fixed_batch_models_are_run_in_their_batch_size(tmp_path: Path) -> None:
    fixed = load_tagger(str(build_tiny_wd14(tmp_path / "fixed", batch=2)), device="cpu")
    images = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, GREEN)]
    assert fixed.fixed_batch == 2
    assert fixed.caption(images, TaggerOptions()) == ["long hair, solo, hatsune miku", "blue sky", "^_^"]


def test_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch, tiny_wd14_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    with pytest.raises(LorakilnError, match=r"pip install onnxruntime \(or onnxruntime-gpu"):
        load_tagger(str(tiny_wd14_dir))


def test_model_errors(tmp_path: Path, tiny_wd14_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_tagger("nobody/no-such-tagger", device="cpu")
    assert "could not download the WD14 tagger model 'nobody/no-such-tagger'" in str(err.value)
    assert "model.onnx and selected_tags.csv" in str(err.value)
    assert "hf download nobody/no-such-tagger model.onnx selected_tags.csv --local-dir models/no-such-tagger" in str(
        err.value)

    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes((tiny_wd14_dir / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError, match="has no selected_tags.csv"):
        load_tagger(str(half))

    (half / "selected_tags.csv").write_text("tag_id,name,category,count\n1,solo,0,5\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="8 outputs per image but selected_tags.csv lists 1 tags"):
        load_tagger(str(half), device="cpu")  # the output width is checked when the model is opened

    (half / "selected_tags.csv").write_text("id,tag\n1,solo\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="does not start with the WD14 header"):
        load_tagger(str(half))


def test_bad_options(tiny_wd14_dir: Path, tmp_path: Path, make_image: MakeImage) -> None:
    make_image(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="--threshold is a probability"):
        tag_images(tmp_path, TaggerOptions(model=str(tiny_wd14_dir), general_threshold=35),
                   OutputOptions(progress=False))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="ONNX Runtime has no CUDA provider"):
            load_tagger(str(tiny_wd14_dir), device="cuda")
