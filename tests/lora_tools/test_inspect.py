"""`lorakiln lora info` on tiny SD 1.x / SDXL files: format, family, per-block ranks and alphas,
training metadata, trigger words, and clear refusals for files that are not LoRAs."""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools import command
from lorakiln.lora_tools.files.info import format_info, inspect_lora
from lorakiln.lora_tools.files.metadata_view import folder_token, trigger_words
from lorakiln.models.family import SD1, SDXL, ModelFamily
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle
from lorakiln.networks.export import save_diffusers_lora, save_kohya_lora
from lorakiln.networks.metadata import TrainingInfo, build_metadata
from lorakiln.networks.network import LoRANetwork, create_lora_network

TAGS = {"10_zwx star": {"zwx": 10, "orange star": 9, "grey background": 4, "a zwx in the snow": 1}}
DIRS = {"10_zwx star": {"n_repeats": 10, "img_count": 10}}


def _network(family: ModelFamily, dim: int, alpha: float, seed: int = 0) -> LoRANetwork:
    bundle = (build_tiny_sd1_bundle if family is SD1 else build_tiny_sdxl_bundle)(seed=0)
    net = create_lora_network(bundle.unet, bundle.text_encoders, family, dim=dim, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * 0.1)
    net.remove()
    return net


def _info(**extra: object) -> TrainingInfo:
    return TrainingInfo(
        output_name="zwx_star", tag_frequency=TAGS, dataset_dirs=DIRS, num_train_images=100, steps=500,
        max_train_steps=500, epoch=5, num_epochs=5, training_started_at=1714557600.0,
        training_finished_at=1714561260.0, seed=42, sd_model_name="toy-base.safetensors", unet_lr=2e-4,
        optimizer="AdamW8bit", **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("info")
    sd1 = _network(SD1, dim=4, alpha=2)
    sdxl = _network(SDXL, dim=2, alpha=1)
    return {
        "sd1": save_kohya_lora(sd1, out / "sd1.safetensors", build_metadata(_info(), sd1), dtype="fp16"),
        "sd1_bare": save_kohya_lora(sd1, out / "sd1_bare.safetensors"),
        "sd1_diffusers": save_diffusers_lora(sd1, out / "sd1_diffusers.safetensors"),
        "sdxl": save_kohya_lora(sdxl, out / "sdxl.safetensors", build_metadata(_info(), sdxl)),
        "sdxl_diffusers": save_diffusers_lora(sdxl, out / "sdxl_diffusers.safetensors"),
    }


def test_kohya_sd1_report(files: dict[str, Path]) -> None:
    info = inspect_lora(files["sd1"])
    assert (info.format, info.family) == ("kohya", "sd1")
    assert "ss_base_model_version = sd_v1" in info.family_reason
    blocks = {b.name: b for b in info.blocks}
    assert blocks["text encoder"].modules == 72
    assert sum(b.modules for n, b in blocks.items() if n.startswith("U-Net")) == 192
    assert [n for n in blocks if n.startswith("U-Net")] == [
        "U-Net down 0 (input_blocks 1–3)", "U-Net down 1 (input_blocks 4–6)", "U-Net down 2 (input_blocks 7–9)",
        "U-Net mid (middle_block)", "U-Net up 1 (output_blocks 3–5)", "U-Net up 2 (output_blocks 6–8)",
        "U-Net up 3 (output_blocks 9–11)",
    ]  # fmt: skip
    for b in info.blocks:
        assert (b.ranks, b.alphas, b.scales) == ([4], [2.0], [0.5])
    assert info.dtypes == {"float16": 792}
    assert info.training["optimizer"] == "AdamW8bit"
    assert info.training["U-Net lr"] == "0.0002"
    assert info.training["started"] == "2024-05-01 10:00:00 UTC"
    assert info.training["finished"] == "2024-05-01 11:01:00 UTC (1 h 1 min)"
    assert info.datasets == [{"folder": "10_zwx star", "repeats": 10, "images": 10}]
    assert info.base_model["name"] == "toy-base.safetensors"
    assert info.hashes["sshs_model_hash_matches"] is True
    assert info.notes == []
    text = format_info(info)
    assert info.targets == "kohya" and "Targets     kohya (every Linear/1x1 conv" in text
    assert "10_zwx star: zwx (10/10 images), orange star (9/10 images)" in text
    assert "kohya LoRA" in text and "SD 1.x" in text and "(matches the tensor data)" in text


def test_kohya_sdxl_report_groups_both_text_encoders_and_sgm_levels(files: dict[str, Path]) -> None:
    info = inspect_lora(files["sdxl"])
    assert (info.format, info.family) == ("kohya", "sdxl")
    blocks = {b.name: b.modules for b in info.blocks}
    assert blocks["TE1 (CLIP-L)"] == 72 and blocks["TE2 (OpenCLIP-G)"] == 192
    assert set(blocks) >= {"U-Net down 1 (input_blocks 4–6)", "U-Net mid (middle_block)",
                           "U-Net up 0 (output_blocks 0–2)"}  # fmt: skip
    assert sum(n for name, n in blocks.items() if name.startswith("U-Net")) == 722
    assert "unresolved keys" not in blocks
    assert all(b.scales == [0.5] for b in info.blocks)
    assert info.targets == "kohya"


@pytest.mark.parametrize("family", [SD1, SDXL])
def test_info_names_the_target_preset(tmp_path: Path, family: ModelFamily) -> None:
    from lorakiln.networks.targets import TargetRule

    bundle = (build_tiny_sd1_bundle if family is SD1 else build_tiny_sdxl_bundle)(seed=0)
    net = create_lora_network(bundle.unet, bundle.text_encoders, family, dim=2, alpha=2,
                              targets=TargetRule("attn"))
    net.remove()
    for fmt, path in (("kohya", save_kohya_lora(net, tmp_path / "attn.safetensors")),
                      ("diffusers", save_diffusers_lora(net, tmp_path / "attn_diffusers.safetensors"))):
        info = inspect_lora(path)
        assert (info.format, info.targets) == (fmt, "attn")
        assert "Targets     attn (attention projections only" in format_info(info)


@pytest.mark.parametrize("name", ["sd1_diffusers", "sdxl_diffusers"])
def test_diffusers_files_are_recognised_with_family_from_keys(files: dict[str, Path], name: str) -> None:
    info = inspect_lora(files[name])
    assert info.format == "diffusers"
    assert info.family == name.split("_")[0]
    assert info.metadata == {"format": "pt"} and info.training == {}
    assert all(b.alphas == [] and b.scales == [1.0] for b in info.blocks)  # alpha folded into lora_B
    assert "unresolved keys" not in {b.name for b in info.blocks}


def test_family_from_unet_only_keys_without_metadata(files: dict[str, Path], tmp_path: Path) -> None:
    for name, family in (("sd1_bare", "sd1"), ("sdxl", "sdxl")):
        tensors = {k: v for k, v in load_file(str(files[name])).items() if k.startswith("lora_unet_")}
        path = tmp_path / f"{name}_unet.safetensors"
        save_file(tensors, str(path))
        info = inspect_lora(path)
        assert info.family == family, info.family_reason
        assert "U-Net structure" in info.family_reason


def test_old_diffusers_naming_is_recognised(files: dict[str, Path], tmp_path: Path) -> None:
    """`…attn1.processor.to_q_lora.down.weight` / `…lora_linear_layer.up.weight` (older diffusers forms)."""
    old = {}
    for key, value in load_file(str(files["sd1_diffusers"])).items():
        role = "down" if ".lora_A." in key else "up"
        module = key.split(".lora_")[0]
        if module.startswith("unet.") and module.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            parent, proj = module.rsplit(".", 1)
            old[f"{parent}.processor.{proj}_lora.{role}.weight"] = value
        elif module.endswith(".to_out.0"):
            old[f"{module[: -len('.to_out.0')]}.processor.to_out_lora.{role}.weight"] = value
        else:
            old[f"{module}.lora_linear_layer.{role}.weight"] = value
    path = tmp_path / "old.safetensors"
    save_file(old, str(path))
    info = inspect_lora(path)
    assert (info.format, info.family) == ("diffusers-old", "sd1")
    assert sum(b.modules for b in info.blocks) == 264
    assert "unresolved keys" not in {b.name for b in info.blocks}


def test_lycoris_keys_are_reported_as_such(tmp_path: Path) -> None:
    t = torch.zeros
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    lokr = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors = {
        f"{key}.hada_w1_a": t(32, 4), f"{key}.hada_w1_b": t(4, 32), f"{key}.hada_w2_a": t(32, 4),
        f"{key}.hada_w2_b": t(4, 32), f"{key}.alpha": torch.tensor(2.0),
        f"{te}.lora_down.weight": t(8, 32), f"{te}.lora_up.weight": t(37, 8), f"{te}.alpha": torch.tensor(8.0),
        f"{te}.dora_scale": t(37, 1),
        f"{lokr}.lokr_w1": t(4, 4), f"{lokr}.lokr_w2": t(8, 8),
    }  # fmt: skip
    path = tmp_path / "lyco.safetensors"
    save_file(tensors, str(path))
    info = inspect_lora(path)
    assert info.format == "lycoris"
    assert info.algorithms == {"loha": 1, "lora": 1, "lokr": 1}
    assert info.dora_modules == 1
    rows = {r["key"]: r for r in info.to_dict(with_modules=True)["modules"]}
    assert (rows[key]["rank"], rows[key]["scale"]) == (4, 0.5)
    assert rows[lokr]["rank"] is None
    text = format_info(info)
    assert "LoHa 1" in text and "LoKr 1" in text and "DoRA on 1" in text
    assert any("DoRA" in n for n in info.notes)


def test_portability_notes(files: dict[str, Path], tmp_path: Path) -> None:
    tensors = load_file(str(files["sd1_bare"]))
    q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"
    del tensors[q]
    for k in [k for k in tensors if k.startswith("lora_te_text_model_encoder_layers_1_self_attn_out_proj")]:
        del tensors[k]
    tensors["bundle_emb.zwx.string_to_param.*"] = torch.zeros(1, 32)
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path), {"ss_base_model_version": "sdxl_base_v1-0", "sshs_model_hash": "0" * 64})
    info = inspect_lora(path)
    notes = "\n".join(info.notes)
    assert info.family == "sd1"  # the keys win over contradicting metadata
    assert "metadata says sdxl" in notes
    assert "1 module(s) have no .alpha" in notes
    assert "lack some of q/k/v/out_proj" in notes
    assert "bundled embedding(s) zwx" in notes
    assert "does not match the tensor data" in notes


def test_trigger_words_rules() -> None:
    md = {
        "ss_tag_frequency": json.dumps(
            {"5_ohwx woman": {"woman": 20, "ohwx woman": 19, "smiling": 6, "hat": 11}}
        ),
        "ss_dataset_dirs": json.dumps({"5_ohwx woman": {"n_repeats": 5, "img_count": 20}}),
    }
    [t] = trigger_words(md)
    assert t.describe() == ["ohwx woman (19/20 images)", "woman (20/20 images)", "hat (11/20 images)"]
    # kohya's dataset-config form: tag_frequency and subsets inside ss_datasets
    md = {"ss_datasets": json.dumps([{"tag_frequency": {"img": {"sks": 3, "dog": 2, "red": 1}},
                                      "subsets": [{"image_dir": "img", "num_repeats": 2, "img_count": 4}]}])}  # fmt: skip
    [t] = trigger_words(md)
    assert t.describe() == ["sks (3/4 images)", "dog (2/4 images)"]
    assert folder_token("train/10_zwx") == "zwx" and folder_token("images") is None


def test_refuses_pickles(tmp_path: Path) -> None:
    zipped = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, zipped)
    raw = tmp_path / "lora.pt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    for path, kind in ((zipped, "zip-packed PyTorch pickle"), (raw, "Python pickle (protocol 2)")):
        with pytest.raises(LorakilnError, match="does not open pickled files") as err:
            inspect_lora(path)
        assert kind in str(err.value) and path.name in str(err.value)
    legacy = tmp_path / "old.pt"  # no pickle magic, but not safetensors either: the suffix decides
    legacy.write_bytes(b"\x00" * 64)
    with pytest.raises(LorakilnError, match=r"a \.pt file \(usually a PyTorch pickle\)"):
        inspect_lora(legacy)


def test_safetensors_with_a_pickle_suffix_is_read(files: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "pytorch_lora_weights.bin"
    renamed.write_bytes(files["sd1_diffusers"].read_bytes())
    assert inspect_lora(renamed).format == "diffusers"


def test_refuses_non_safetensors_and_missing(tmp_path: Path) -> None:
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(LorakilnError, match="not a .safetensors file"):
        inspect_lora(junk)
    with pytest.raises(LorakilnError, match="no such file"):
        inspect_lora(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("tensors", "looks_like"),
    [
        ({"emb_params": torch.zeros(2, 768)}, "SD 1.x textual-inversion embedding (kohya emb_params, 2 vector"),
        ({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, "SDXL textual-inversion embedding"),
        ({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, "Stable Diffusion full checkpoint"),
        ({"conv_in.weight": torch.zeros(4, 4), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(2)},
         "diffusers U-Net weights"),
        ({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_in.weight": torch.zeros(1)}, "a VAE"),
    ],
)  # fmt: skip
def test_no_lora_keys_says_what_the_file_is(tmp_path: Path, tensors: dict, looks_like: str) -> None:
    path = tmp_path / "thing.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LorakilnError, match="has no LoRA keys") as err:
        inspect_lora(path)
    assert looks_like in str(err.value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakiln lora")
    command.add_arguments(parser.add_subparsers(dest="lora_verb", required=True))
    return parser


def test_command_info_json_and_text(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["info", str(files["sd1"]), "--json"])
    assert command.run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "kohya" and data["family"] == "sd1"
    assert data["trigger_words"][0]["tags"][0] == {"tag": "zwx", "images": 10}
    assert data["metadata"]["ss_dataset_dirs"] == DIRS  # JSON-valued metadata decoded
    assert "modules" not in data
    assert command.run(_parser().parse_args(["info", str(files["sdxl"]), "--no-verify"])) == 0
    out = capsys.readouterr().out
    assert "Base model  SDXL" in out and "TE2 (OpenCLIP-G)" in out


def test_command_module_imports_no_torch() -> None:
    code = "import sys, lorakiln.lora_tools.command; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
