"""BLIP captioning with a tiny model saved like a real one: options reach `generate`, files are right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from captioning_support import BLIP_PRIMED_TOKENS, MakeImage

from lorakiln.captioning.blip import BlipOptions, caption_with_blip, generate_kwargs, load_blip
from lorakiln.captioning.files import OutputOptions, join_caption
from lorakiln.data.imagefolder import scan_imagefolder
from lorakiln.errors import ConfigError, DatasetError, ModelLoadError

QUIET = OutputOptions(progress=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def kohya_root(tmp_path: Path, make_image: MakeImage) -> Path:
    """train/10_zwx/{a,b}.png and train/3_zwx toy/c.jpg: the folder users point the command at."""
    root = tmp_path / "train"
    make_image(root / "10_zwx" / "a.png", (40, 30), (255, 0, 0))
    make_image(root / "10_zwx" / "b.png", (24, 24), (0, 0, 255))
    make_image(root / "3_zwx toy" / "c.jpg", (30, 40), (0, 255, 0))
    return root


@pytest.fixture
def generate_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every `BlipForConditionalGeneration.generate` call's keyword arguments (the call still runs)."""
    from transformers import BlipForConditionalGeneration

    calls: list[dict[str, Any]] = []
    original = BlipForConditionalGeneration.generate

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(dict(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BlipForConditionalGeneration, "generate", spy)
    return calls


def test_prefix_postfix_and_extension(tiny_blip_dir: Path, kohya_root: Path) -> None:
    before = {p: _digest(p) for p in kohya_root.rglob("*.*")}
    options = BlipOptions(model=str(tiny_blip_dir), prefix="photo of zwx, ", postfix=", 4k photo", min_length=7)
    summary = caption_with_blip(kohya_root, options, OutputOptions(caption_extension="caption", progress=False))

    assert [p.name for p in summary.written] == ["a.png", "b.png", "c.jpg"]  # recursive by default
    for image in before:
        text = image.with_suffix(".caption").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        caption = text.strip()
        assert caption.startswith("photo of zwx, ") and caption.endswith(", 4k photo")
        middle = caption.removeprefix("photo of zwx, ").removesuffix(", 4k photo")
        assert len(middle.split()) == 7 - BLIP_PRIMED_TOKENS and "picture" not in middle
    assert not list(kohya_root.rglob("*.txt"))
    assert {p: _digest(p) for p in before} == before  # images untouched


def test_num_beams_and_lengths_reach_generate(tiny_blip_dir: Path, generate_calls: list[dict[str, Any]],
                                              make_image: MakeImage, tmp_path: Path) -> None:
    from PIL import Image

    blip = load_blip(str(tiny_blip_dir), device="cpu")
    image = Image.open(make_image(tmp_path / "a.png")).convert("RGB")
    short = blip.caption([image], BlipOptions(num_beams=3, min_length=6, max_length=40))
    long = blip.caption([image], BlipOptions(num_beams=3, min_length=14, max_length=40))

    assert [(c["num_beams"], c["min_length"], c["max_length"], c["do_sample"]) for c in generate_calls] == [
        (3, 6, 40, False), (3, 14, 40, False)]
    # min_length counts the 4 primed tokens ([DEC] a picture of), as in kohya's make_captions.py;
    # the tiny model ends a caption as soon as it may, so the length is exactly what was forced.
    assert len(short[0].split()) == 6 - BLIP_PRIMED_TOKENS
    assert len(long[0].split()) == 14 - BLIP_PRIMED_TOKENS


def test_sampling_is_seeded_and_uses_top_p(tiny_blip_dir: Path, generate_calls: list[dict[str, Any]],
                                           make_image: MakeImage, tmp_path: Path) -> None:
    import torch
    from PIL import Image

    blip = load_blip(str(tiny_blip_dir), device="cpu")
    image = Image.open(make_image(tmp_path / "a.png")).convert("RGB")
    options = BlipOptions(sample=True, top_p=0.8, seed=7, min_length=16)
    state = torch.random.get_rng_state()
    first = blip.caption([image, image], options)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert blip.caption([image, image], options) == first
    assert generate_calls[0]["do_sample"] is True and generate_calls[0]["top_p"] == 0.8
    assert generate_calls[0]["repetition_penalty"] == 1.1  # BLIP's sampling setting


def test_batches_give_the_same_captions(tiny_blip_dir: Path, kohya_root: Path, tmp_path: Path) -> None:
    one = caption_with_blip(kohya_root, BlipOptions(model=str(tiny_blip_dir), min_length=9), QUIET)
    texts = {p: p.with_suffix(".txt").read_text(encoding="utf-8") for p in one.written}
    again = caption_with_blip(kohya_root, BlipOptions(model=str(tiny_blip_dir), min_length=9, batch_size=2),
                              OutputOptions(overwrite=True, progress=False))
    assert again.written == one.written
    assert {p: p.with_suffix(".txt").read_text(encoding="utf-8") for p in again.written} == texts


def test_existing_captions_kept_unless_overwrite(tiny_blip_dir: Path, kohya_root: Path) -> None:
    mine = kohya_root / "10_zwx" / "a.txt"
    mine.write_text("zwx, my own careful caption\n", encoding="utf-8")
    empty = kohya_root / "10_zwx" / "b.txt"
    empty.write_text("  \n", encoding="utf-8")  # an empty file is no caption to keep
    stamp = mine.stat().st_mtime_ns

    options = BlipOptions(model=str(tiny_blip_dir))
    summary = caption_with_blip(kohya_root, options, QUIET)
    assert summary.kept == [kohya_root / "10_zwx" / "a.png"]
    assert [p.name for p in summary.written] == ["b.png", "c.jpg"]
    assert mine.read_text(encoding="utf-8") == "zwx, my own careful caption\n" and mine.stat().st_mtime_ns == stamp
    assert empty.read_text(encoding="utf-8").strip()
    assert "kept 1 existing caption (use --overwrite to replace)" in summary.format()

    # every caption present: the model is not even loaded (a bogus model id is never touched)
    again = caption_with_blip(kohya_root, BlipOptions(model="nobody/never-loaded"), QUIET)
    assert len(again.kept) == 3 and not again.written

    replaced = caption_with_blip(kohya_root, options, OutputOptions(overwrite=True, progress=False))
    assert len(replaced.written) == 3 and not replaced.kept
    assert "careful" not in mine.read_text(encoding="utf-8")


def test_metadata_jsonl_merges_rows(tiny_blip_dir: Path, tmp_path: Path, make_image: MakeImage) -> None:
    root = tmp_path / "huggy"
    make_image(root / "a.png")
    make_image(root / "b.png", color=(0, 0, 255))
    make_image(root / "more" / "c.png", color=(0, 255, 0))
    lines = [{"file_name": "a.png", "prompt": "a TOK emoji, kept", "source": "hand"},
             {"file_name": "gone.png", "prompt": "row for a deleted image stays"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")

    options = BlipOptions(model=str(tiny_blip_dir), prefix="a TOK emoji,")
    summary = caption_with_blip(root, options, OutputOptions(output="metadata", progress=False))
    assert [p.name for p in summary.written] == ["b.png", "c.png"] and [p.name for p in summary.kept] == ["a.png"]
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[:2] == lines
    assert [r["file_name"] for r in rows[2:]] == ["b.png", "more/c.png"]
    assert all(r["prompt"].startswith("a TOK emoji, ") for r in rows[2:])
    assert not list(root.rglob("*.txt"))

    summary = caption_with_blip(root, options, OutputOptions(output="metadata", overwrite=True, progress=False))
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["source"] == "hand" and rows[0]["prompt"] != "a TOK emoji, kept"  # other columns survive
    assert len(rows) == 4
    (root / "gone.png").write_bytes((root / "a.png").read_bytes())  # so the trainer's scanner accepts every row
    dataset = scan_imagefolder(root, caption_column="prompt")
    assert all(item.caption.startswith("a TOK emoji, ") for item in dataset.items if item.path.name != "gone.png")


def test_metadata_with_custom_column_and_broken_file(tiny_blip_dir: Path, tmp_path: Path,
                                                     make_image: MakeImage) -> None:
    root = tmp_path / "flat"
    make_image(root / "a.png")
    output = OutputOptions(output="metadata", caption_column="text", progress=False)
    caption_with_blip(root, BlipOptions(model=str(tiny_blip_dir)), output)
    row = json.loads((root / "metadata.jsonl").read_text(encoding="utf-8"))
    assert set(row) == {"file_name", "text"}

    (root / "metadata.jsonl").write_text('{"file_name": "a.png"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"metadata.jsonl cannot be merged: .*line 2"):
        caption_with_blip(root, BlipOptions(model=str(tiny_blip_dir)), output)
    assert "not json" in (root / "metadata.jsonl").read_text(encoding="utf-8")  # left as it was


def test_unreadable_image_reported_and_skipped(tiny_blip_dir: Path, kohya_root: Path, make_image: MakeImage) -> None:
    bad = make_image(kohya_root / "10_zwx" / "broken.png", broken=True)
    summary = caption_with_blip(kohya_root, BlipOptions(model=str(tiny_blip_dir)), QUIET)
    assert [p.name for p in summary.written] == ["a.png", "b.png", "c.jpg"]
    assert [p for p, _ in summary.failed] == [bad] and not summary.ok
    assert not bad.with_suffix(".txt").exists()
    text = summary.format()
    assert text.startswith("captioned 3 images (.txt files next to the images), 1 failed")
    assert "10_zwx/broken.png: cannot be read" in text


def test_same_stem_images_do_not_share_a_caption(tiny_blip_dir: Path, tmp_path: Path, make_image: MakeImage) -> None:
    make_image(tmp_path / "x.png")
    make_image(tmp_path / "x.jpg")
    summary = caption_with_blip(tmp_path, BlipOptions(model=str(tiny_blip_dir)), QUIET)
    assert [p.name for p in summary.written] == ["x.jpg"]
    assert summary.failed[0][0].name == "x.png" and "shares the caption file x.txt" in summary.failed[0][1]


def test_no_recursive_and_hidden_folders(tiny_blip_dir: Path, kohya_root: Path, make_image: MakeImage) -> None:
    make_image(kohya_root / "top.png")
    make_image(kohya_root / ".ipynb_checkpoints" / "copy.png")
    flat = caption_with_blip(kohya_root, BlipOptions(model=str(tiny_blip_dir)),
                             OutputOptions(recursive=False, progress=False))
    assert [p.name for p in flat.written] == ["top.png"]
    deep = caption_with_blip(kohya_root, BlipOptions(model=str(tiny_blip_dir)), QUIET)
    assert sorted(p.name for p in deep.written) == ["a.png", "b.png", "c.jpg"]
    assert not (kohya_root / ".ipynb_checkpoints" / "copy.txt").exists()


def test_missing_model_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network
    with pytest.raises(ModelLoadError) as err:
        load_blip("nobody/no-such-blip-model", device="cpu")
    message = str(err.value)
    assert "could not download the BLIP model 'nobody/no-such-blip-model'" in message
    assert "offline" in message and "--model" in message and "hf download nobody/no-such-blip-model" in message

    with pytest.raises(ModelLoadError, match="no such folder"):
        load_blip(str(tmp_path / "models" / "missing") + "/", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is not a BLIP captioning model folder"):
        load_blip(str(tmp_path / "empty"), device="cpu")


def test_bad_options_and_folders(tiny_blip_dir: Path, tmp_path: Path, make_image: MakeImage) -> None:
    make_image(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="--max-length 4 is below --min-length 5"):
        caption_with_blip(tmp_path, BlipOptions(model=str(tiny_blip_dir), max_length=4), QUIET)
    with pytest.raises(ConfigError, match="would overwrite the images"):
        caption_with_blip(tmp_path, BlipOptions(model=str(tiny_blip_dir)),
                          OutputOptions(caption_extension="png", progress=False))
    with pytest.raises(DatasetError, match="does not exist"):
        caption_with_blip(tmp_path / "nope", BlipOptions(model=str(tiny_blip_dir)), QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        caption_with_blip(tmp_path / "empty", BlipOptions(model=str(tiny_blip_dir)), QUIET)


def test_generate_kwargs_follow_make_captions() -> None:
    assert generate_kwargs(BlipOptions()) == {"num_beams": 1, "min_length": 5, "max_length": 75,
                                              "do_sample": False, "repetition_penalty": 1.0}
    sampled = generate_kwargs(BlipOptions(sample=True))
    assert sampled["do_sample"] is True and sampled["top_p"] == 0.9


@pytest.mark.parametrize(("prefix", "text", "postfix", "sep", "expected"), [
    ("photo of anantn, ", "a man on a rock", "", " ", "photo of anantn, a man on a rock"),
    ("photo of anantn,", "a man", "", " ", "photo of anantn, a man"),
    ("zwx", "long hair, solo", "", ", ", "zwx, long hair, solo"),
    ("zwx", "a man", "4k", " ", "zwx a man 4k"),
    ("", "a man", ", 4k", " ", "a man, 4k"),
    ("zwx, ", "", "", ", ", "zwx,"),
    ("", "a\nman  ", "", " ", "a man"),
])
def test_join_caption(prefix: str, text: str, postfix: str, sep: str, expected: str) -> None:
    assert join_caption(prefix, text, postfix, sep) == expected
