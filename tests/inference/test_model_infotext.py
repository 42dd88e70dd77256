"""PNG infotext carries A1111's `Model hash` (first 10 hex digits of the checkpoint file's sha256,
A1111 `CheckpointInfo.shorthash`) and `Model` (the file name without extension) for a single-file
checkpoint; for a diffusers folder or a built-in model neither, since A1111 loads (and hashes) files only."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from lorakiln.inference.generate import generate, save_images
from lorakiln.inference.infotext import GenerationParams, model_fields, parse_infotext, read_png_infotext
from lorakiln.models import loading
from lorakiln.models.loading import load_base_model, sha256_file
from lorakiln.models.tiny import build_tiny_sd1_bundle

FAST = GenerationParams(prompt="photo of zwx", steps=2, sampler="Euler a", cfg_scale=7, seed=7,
                        width=64, height=64, schedule_type=None)


def test_model_fields_follow_a1111() -> None:
    digest = "0123456789abcdef" * 4
    assert model_fields("v1-5-pruned-emaonly", digest) == {"Model hash": "0123456789", "Model": "v1-5-pruned-emaonly"}


def test_single_file_checkpoint_writes_model_hash_and_name(tiny_sd1_file: Path, tmp_path: Path) -> None:
    bundle = load_base_model(tiny_sd1_file)
    expected = hashlib.sha256(tiny_sd1_file.read_bytes()).hexdigest()[:10]
    # a pasted A1111 line names another checkpoint: its hash and name are replaced, not kept
    pasted = replace(FAST, extra={"Model hash": "deadbeef00", "Model": "someone-elses-model"})
    path = save_images(generate(bundle, pasted), tmp_path)[0]
    text = read_png_infotext(path)
    assert f"Size: 64x64, Model hash: {expected}, Model: tiny-sd1" in text
    params = parse_infotext(text)
    assert params.extra["Model hash"] == expected and params.extra["Model"] == "tiny-sd1"


@pytest.mark.parametrize("source", ["folder", "built-in"])
def test_folders_and_built_in_models_write_neither(source: str, tiny_sd1_dir: Path) -> None:
    bundle = load_base_model(tiny_sd1_dir) if source == "folder" else build_tiny_sd1_bundle(seed=0)
    image = generate(bundle, replace(FAST, extra={"Model hash": "deadbeef00", "Model": "pasted"}))[0]
    assert "Model hash" not in image.params.extra and "Model" not in image.params.extra  # stale paste dropped


def test_checkpoint_hash_is_computed_once_per_file_version(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 1000)
    first = sha256_file(path)
    hits = loading._sha256_of.cache_info().hits
    assert sha256_file(path) == first == hashlib.sha256(b"x" * 1000).hexdigest()
    assert loading._sha256_of.cache_info().hits == hits + 1  # not read again
    path.write_bytes(b"y" * 1001)  # rewritten: new size and mtime, new hash
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) == hashlib.sha256(b"y" * 1001).hexdigest()
