"""`load_base_model`: diffusers folders, single files, pickles, hub ids, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakiln.errors import ModelLoadError
from lorakiln.models.bundle import ModelBundle
from lorakiln.models.family import SD1
from lorakiln.models.loading import load_base_model, load_vae, sha256_file


def assert_state_equal(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=atol), key


def assert_bundles_equal(a: ModelBundle, b: ModelBundle) -> None:
    assert_state_equal(a.unet, b.unet)
    assert_state_equal(a.vae, b.vae)
    assert_state_equal(a.text_encoders[0], b.text_encoders[0])
    ids = "a photo of a cat"
    assert a.tokenizers[0](ids).input_ids == b.tokenizers[0](ids).input_ids


@pytest.fixture(scope="module")
def folder_bundle(tiny_sd1_dir: Path) -> ModelBundle:
    return load_base_model(tiny_sd1_dir)


def test_folder_load(folder_bundle: ModelBundle, tiny_sd1_dir: Path) -> None:
    b = folder_bundle
    assert b.family is SD1
    assert b.name == tiny_sd1_dir.name and b.sha256 is None
    assert type(b.noise_scheduler).__name__ == "DDPMScheduler"
    assert b.prediction_type == "epsilon"
    assert b.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert not b.unet.training and b.unet.dtype == torch.float32
    assert b.tokenizers[0]("a cat").input_ids[0] == b.tokenizers[0].bos_token_id


def test_single_file_equals_folder(folder_bundle: ModelBundle, tiny_sd1_file: Path) -> None:
    b = load_base_model(tiny_sd1_file)
    assert b.family is SD1
    assert b.name == "tiny-sd1"
    assert b.sha256 == sha256_file(tiny_sd1_file) and len(b.sha256) == 64
    assert b.extra["format"] == "single_file"
    assert_bundles_equal(folder_bundle, b)
    # Non-shape facts (GroupNorm groups, heads) come from the file's metadata, so outputs match too.
    assert b.unet.config.norm_num_groups == folder_bundle.unet.config.norm_num_groups
    te_a, te_b = folder_bundle.text_encoders[0], b.text_encoders[0]
    ids = torch.tensor([folder_bundle.tokenizers[0]("a red cat", padding="max_length").input_ids])
    with torch.no_grad():
        assert torch.allclose(te_a(ids)[0], te_b(ids)[0], atol=1e-6)


def test_single_file_small_unet_keeps_its_sample_size(tiny_sd1_file: Path) -> None:
    """A pipeline built from a small single file (the toy model) neither warns nor rewrites sample_size."""
    import warnings

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    b = load_base_model(tiny_sd1_file)
    assert b.unet.config.sample_size < 64
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*sample_size", category=FutureWarning)
        pipe = StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoders[0], tokenizer=b.tokenizers[0],
                                       unet=b.unet, scheduler=EulerDiscreteScheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    assert pipe.unet.config.sample_size == b.unet.config.sample_size


def test_tiny_source_equals_folder(folder_bundle: ModelBundle) -> None:
    b = load_base_model("tiny:sd1")
    assert b.family is SD1 and b.name == "tiny-sd1"
    assert_bundles_equal(folder_bundle, b)


def test_dtype_is_applied(tiny_sd1_file: Path) -> None:
    b = load_base_model(tiny_sd1_file, dtype=torch.bfloat16)
    assert {p.dtype for m in (b.unet, b.vae, b.text_encoders[0]) for p in m.parameters()} == {torch.bfloat16}


def test_fp16_file_loads_as_fp32(folder_bundle: ModelBundle, tmp_path: Path) -> None:
    """Model-site files are usually fp16; training asks for fp32 (or bf16) master weights."""
    from lorakiln.models.ldm_export import save_ldm_single_file
    from lorakiln.models.tiny import TINY_TOKENIZER_NAME

    a = folder_bundle
    path = save_ldm_single_file(tmp_path / "half.safetensors", a.unet, a.vae, a.text_encoders[0],
                                dtype=torch.float16, tokenizer_name=TINY_TOKENIZER_NAME)
    b = load_base_model(path)
    assert b.unet.dtype == torch.float32
    w = a.unet.conv_in.weight
    assert torch.equal(b.unet.conv_in.weight, w.half().float())


def test_tokenizer_required_for_non_clip_vocab(tiny_sd1_file: Path, tiny_sd1_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(tiny_sd1_file), bare)
    configs = shutil.copytree(tiny_sd1_dir, tmp_path / "configs", ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(ModelLoadError, match=r"bare\.safetensors.*658-token.*49408.*tokenizer="):
        load_base_model(bare, config_dir=configs)
    b = load_base_model(bare, config_dir=configs, tokenizer=tiny_sd1_dir / "tokenizer")
    assert len(b.tokenizers[0]) == 658


def test_config_dir_and_metadata_free_file(folder_bundle: ModelBundle, tiny_sd1_file: Path, tiny_sd1_dir: Path,
                                           tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(tiny_sd1_file), bare)  # same tensors, no lorakiln metadata
    # GroupNorm groups are not in the weights: SD 1.5's 32 does not divide the tiny widths.
    with pytest.raises(ModelLoadError, match=r"norm_num_groups=32.*config_dir"):
        load_base_model(bare)
    b = load_base_model(bare, config_dir=tiny_sd1_dir)
    assert b.extra["configs"] == str(tiny_sd1_dir)
    assert_bundles_equal(folder_bundle, b)


def test_legacy_text_encoder_layout(folder_bundle: ModelBundle, tiny_sd1_file: Path, tmp_path: Path) -> None:
    """Old checkpoints: `cond_stage_model.transformer.encoder...` (no `text_model.`), with position_ids."""
    with safe_open(str(tiny_sd1_file), "pt") as fh:
        metadata = fh.metadata()
    sd = load_file(tiny_sd1_file)
    legacy = {k.replace("transformer.text_model.", "transformer."): v for k, v in sd.items()}
    legacy["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, path, metadata=metadata)
    assert_state_equal(load_base_model(path).text_encoders[0], folder_bundle.text_encoders[0])


def test_pickle_refused_then_allowed(folder_bundle: ModelBundle, tiny_sd1_file: Path, tiny_sd1_dir: Path,
                                     tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(tiny_sd1_file), "global_step": 1}, ckpt)
    with pytest.raises(ModelLoadError) as err:
        load_base_model(ckpt)
    msg = str(err.value)
    assert str(ckpt) in msg and "allow_pickle" in msg and "code" in msg
    b = load_base_model(ckpt, allow_pickle=True, config_dir=tiny_sd1_dir)
    assert_bundles_equal(folder_bundle, b)


def test_pickle_folder_refused_then_allowed(folder_bundle: ModelBundle, tiny_sd1_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_sd1_dir, tmp_path / "bin-model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(ModelLoadError, match=r"diffusion_pytorch_model\.bin.*allow_pickle"):
        load_base_model(folder)
    assert_state_equal(load_base_model(folder, allow_pickle=True).unet, folder_bundle.unet)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError, match="not found") as err:
        load_base_model(missing)
    assert str(missing) in str(err.value)


def test_unknown_suffix_and_plain_folder(tmp_path: Path) -> None:
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"model\.txt.*unknown checkpoint format"):
        load_base_model(txt)
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_base_model(tmp_path)


def test_non_sd_file(tmp_path: Path) -> None:
    path = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion 1.x or SDXL checkpoint") as err:
        load_base_model(path)
    assert str(path) in str(err.value)


def test_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"'someorg/some-model'.*offline.*local diffusers folder"):
        load_base_model("someorg/some-model", local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'someorg/some-model'.*offline"):
        load_base_model("someorg/some-model")


def test_hub_id_uses_snapshot(tiny_sd1_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              folder_bundle: ModelBundle) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(tiny_sd1_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.chdir(tmp_path)
    b = load_base_model("someorg/tiny-model", local_files_only=True)
    assert b.name == "someorg/tiny-model" and b.source == "someorg/tiny-model"
    (repo_id, kwargs), = calls
    assert repo_id == "someorg/tiny-model" and kwargs["local_files_only"] is True
    assert "unet/*" in kwargs["allow_patterns"] and "*.bin" in kwargs["ignore_patterns"]
    assert_state_equal(b.unet, folder_bundle.unet)


def test_vae_override_folder_and_single_file(tiny_sd1_file: Path, tmp_path: Path) -> None:
    from lorakiln.models.tiny import save_tiny_sd1_diffusers

    other = save_tiny_sd1_diffusers(tmp_path / "seed1", seed=1)
    b = load_base_model(tiny_sd1_file, vae=other / "vae")
    ref = load_base_model(other)
    assert_state_equal(b.vae, ref.vae)
    assert b.extra["vae"] == str(other / "vae")
    # A standalone LDM-layout VAE file (no `first_stage_model.` prefix), as model sites ship them.
    from lorakiln.models.ldm_export import save_ldm_single_file

    whole = save_ldm_single_file(tmp_path / "seed1.safetensors", ref.unet, ref.vae, ref.text_encoders[0])
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in load_file(whole).items()
                if k.startswith("first_stage_model.")}
    save_file(vae_only, tmp_path / "vae.safetensors")
    assert_state_equal(load_vae(tmp_path / "vae.safetensors", base_config=b.vae.config), ref.vae)
    b2 = load_base_model(tiny_sd1_file, vae=tmp_path / "vae.safetensors")
    assert_state_equal(b2.vae, ref.vae)
    with pytest.raises(ModelLoadError, match="VAE"):
        load_vae(tmp_path / "missing-vae.safetensors")
