"""Spec tests for the kohya file: the rules of kohya sd-scripts and A1111, without the clients."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from networks_support import ALPHA, DIM
from safetensors.torch import save

from lorakiln.networks import export
from lorakiln.networks.export import (
    addnet_legacy_hash,
    addnet_model_hash,
    read_lora_file,
    save_diffusers_lora,
    save_kohya_lora,
)
from lorakiln.networks.metadata import JSON_KEYS, MINIMUM_KEYS, TrainingInfo, build_metadata
from lorakiln.networks.network import LoRANetwork

KEY_RE = re.compile(r"^lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _info() -> TrainingInfo:
    return TrainingInfo(
        output_name="zwx_style",
        steps=20,
        max_train_steps=20,
        num_train_images=5,
        tag_frequency={"5_zwx": {"zwx": 5, "red circle": 2}},
        dataset_dirs={"5_zwx": {"n_repeats": 5, "img_count": 5}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 25}}, "mean_img_ar_error": 0.0},
        seed=42,
        clip_skip=2,
        trigger_phrase="zwx",
        sd_model_name="tiny",
        sd_model_hash="ab" * 32,
        extra={"noise_offset_random_strength": False, "datasets": [{"resolution": [512, 512]}]},
    )


@pytest.fixture
def saved(network: LoRANetwork, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    md = build_metadata(_info(), network)
    return save_kohya_lora(network, tmp_path / "zwx_style.safetensors", md, dtype="fp16"), md


def test_key_grammar_and_shapes(saved: tuple[Path, dict[str, str]], network: LoRANetwork) -> None:
    tensors, _ = read_lora_file(saved[0])
    bad = [k for k in tensors if not KEY_RE.match(k)]
    assert not bad, bad[:5]
    modules: dict[str, set[str]] = defaultdict(set)
    for key in tensors:
        name, _, param = key.partition(".")
        modules[name].add(param)
    assert len(modules) == 192 + 72
    for name, params in modules.items():
        assert params == {"lora_down.weight", "lora_up.weight", "alpha"}, name
        down, up, alpha = (tensors[f"{name}.{p}"] for p in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert alpha.dim() == 0 and float(alpha) == ALPHA
        assert up.shape[1] == down.shape[0] == DIM
        target = network[name].target
        if isinstance(target, torch.nn.Conv2d):
            assert down.dim() == 4 and down.shape[2:] == target.weight.shape[2:]
            assert tuple(up.shape) == (target.out_channels, DIM, 1, 1)
        else:
            assert down.dim() == 2 and up.dim() == 2


def test_text_encoder_attention_sets_complete(saved: tuple[Path, dict[str, str]]) -> None:
    """q, k, v and out_proj together per layer (A1111's SDXL TE2 rule, diffusers' out_proj rule)."""
    tensors, _ = read_lora_file(saved[0])
    per_layer: dict[str, set[str]] = defaultdict(set)
    for key in tensors:
        m = re.match(r"(lora_te\d?_text_model_encoder_layers_\d+)_self_attn_(\w+?)_proj\.", key)
        if m:
            per_layer[m[1]].add(m[2])
    assert len(per_layer) == 12
    assert all(parts == {"q", "k", "v", "out"} for parts in per_layer.values())


def test_metadata_strings_json_and_required_keys(saved: tuple[Path, dict[str, str]]) -> None:
    _, md = read_lora_file(saved[0])
    assert all(isinstance(v, str) for v in md.values())
    for key in JSON_KEYS & md.keys():
        json.loads(md[key])
    assert json.loads(md["ss_tag_frequency"]) == {"5_zwx": {"zwx": 5, "red circle": 2}}
    required = {
        "ss_output_name", "ss_base_model_version", "ss_v2", "ss_network_module", "ss_network_dim",
        "ss_network_alpha", "ss_network_args", "ss_tag_frequency", "ss_dataset_dirs",
        "ss_training_started_at", "ss_training_finished_at", "ss_num_train_images", "ss_num_epochs",
        "ss_epoch", "ss_steps", "ss_max_train_steps", "ss_learning_rate", "ss_unet_lr",
        "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler", "ss_seed", "ss_resolution",
        "ss_clip_skip", "ss_mixed_precision", "ss_session_id", "ss_sd_model_name",
        "ss_new_sd_model_hash", "ss_bucket_info", "ss_caption_dropout_rate", "sshs_model_hash",
        "sshs_legacy_hash", "modelspec.sai_model_spec", "modelspec.architecture",
        "modelspec.implementation", "modelspec.title", "modelspec.date", "modelspec.resolution",
        "modelspec.prediction_type", "modelspec.encoder_layer", "modelspec.trigger_phrase",
    }  # fmt: skip
    assert required <= md.keys(), required - md.keys()
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_v2"] == "False"  # A1111 detect_version
    assert md["ss_network_module"] == "networks.lora"
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("8", "4.0")
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert md["modelspec.implementation"] == "diffusers"
    assert md["modelspec.sai_model_spec"] == "1.0.1"
    assert md["modelspec.resolution"] == "512x512" and md["modelspec.encoder_layer"] == "2"
    assert md["modelspec.prediction_type"] == "epsilon"
    assert md["ss_resolution"] == "(512, 512)" and md["ss_clip_skip"] == "2"
    assert md["ss_noise_offset_random_strength"] == "False"
    assert json.loads(md["ss_datasets"]) == [{"resolution": [512, 512]}]


def test_minimal_metadata(network: LoRANetwork) -> None:
    md = build_metadata(_info(), network, minimal=True)
    assert tuple(md) == MINIMUM_KEYS


def test_sshs_hashes_recompute(saved: tuple[Path, dict[str, str]]) -> None:
    path, md_in = saved
    buf = path.read_bytes()
    tensors, md = read_lora_file(path)
    # model hash: tensor bytes only, so it recomputes from the final file
    assert md["sshs_model_hash"] == addnet_model_hash(buf)
    # legacy hash: kohya computes it on a buffer with only the ss_* metadata
    ss_only = save(tensors, {k: v for k, v in md_in.items() if k.startswith("ss_")})
    assert md["sshs_legacy_hash"] == addnet_legacy_hash(ss_only)
    assert re.fullmatch(r"[0-9a-f]{64}", md["sshs_model_hash"])
    assert re.fullmatch(r"[0-9a-f]{8}", md["sshs_legacy_hash"])


def test_legacy_hash_on_a_file_larger_than_1mib() -> None:
    """Tiny test files end before 0x100000; check the slice rule on a 2 MiB tensor."""
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(2**19, dtype=torch.float32)}
    md = {"ss_output_name": "x", "modelspec.title": "ignored for hashes"}
    hashes = export.precalculate_hashes(tensors, md)
    ss_only = save(tensors, {"ss_output_name": "x"})
    assert hashes["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    assert (
        hashes["sshs_model_hash"]
        == hashlib.sha256(ss_only[8 + int.from_bytes(ss_only[:8], "little") :]).hexdigest()
    )


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("fp16", torch.float16), ("bf16", torch.bfloat16), ("float", torch.float32), (None, torch.float32)],
)
def test_save_precision_casts_everything(network: LoRANetwork, tmp_path: Path, dtype, expected) -> None:
    path = save_kohya_lora(network, tmp_path / "x.safetensors", {}, dtype=dtype)
    tensors, _ = read_lora_file(path)
    assert {t.dtype for t in tensors.values()} == {expected}
    assert all(tensors[k].dim() == 0 for k in tensors if k.endswith(".alpha"))
    # the network itself stays fp32
    assert all(t.dtype == torch.float32 for t in network.state_dict().values())


def test_metadata_must_be_strings(network: LoRANetwork, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ss_steps"):
        save_kohya_lora(network, tmp_path / "x.safetensors", {"ss_steps": 3})  # type: ignore[dict-item]


def test_write_is_atomic(network: LoRANetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / "lora.safetensors"
    path.write_bytes(b"old file")
    real_write = export._write_safetensors

    class HalfThenFail:
        """A file object that writes half the bytes, then fails (disk full mid-write)."""

        def __init__(self, fh) -> None:
            self.fh = fh

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError("disk full")

        def __enter__(self) -> HalfThenFail:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    real_open = open
    monkeypatch.setattr(export, "open", lambda p, mode="r": HalfThenFail(real_open(p, mode)), raising=False)
    with pytest.raises(OSError, match="disk full"):
        save_kohya_lora(network, path, {})
    assert path.read_bytes() == b"old file"
    assert sorted(os.listdir(out_dir)) == ["lora.safetensors"]  # temp file cleaned up

    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        real_write(path, {"x": torch.zeros(1)}, {})
    assert path.read_bytes() == b"old file"
    assert sorted(os.listdir(out_dir)) == ["lora.safetensors"]


def test_diffusers_state_dict_names_and_folded_scale(network: LoRANetwork, tmp_path: Path) -> None:
    path = save_diffusers_lora(network, tmp_path / "out")
    assert path.name == "pytorch_lora_weights.safetensors"
    tensors, md = read_lora_file(path)
    assert md == {"format": "pt"}
    assert len(tensors) == 2 * 264
    assert all(k.startswith(("unet.", "text_encoder.text_model.")) for k in tensors)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    torch.testing.assert_close(tensors[f"{name}.lora_B.weight"], network[key].lora_up.weight * (ALPHA / DIM))
    torch.testing.assert_close(tensors[f"{name}.lora_A.weight"], network[key].lora_down.weight)
    assert save_diffusers_lora(network, tmp_path / "x.safetensors").name == "x.safetensors"


def test_read_lora_file_refuses_a_damaged_file_naming_it(tmp_path: Path) -> None:
    """The shared structure check, not the safetensors library's own error text."""
    from lorakiln.errors import FileFormatError

    broken = Path(__file__).resolve().parents[1] / "fixtures" / "broken" / "truncated-data.safetensors"
    path = tmp_path / "cut.safetensors"
    path.write_bytes(broken.read_bytes())
    with pytest.raises(FileFormatError, match="a truncated file") as err:
        read_lora_file(path)
    assert str(err.value).startswith(f"{path}:")
