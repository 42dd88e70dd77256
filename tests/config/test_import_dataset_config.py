"""sd-scripts dataset configs, the docs' one-option-per-line commands, and what the header says
about paths: the parts of `lorakiln config import` a migrating sd-scripts user meets first.

Dataset configs follow sd-scripts' docs (config_README): `[general]` < `[[datasets]]` <
`[[datasets.subsets]]`, and the dataset config wins over the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from lorakiln.config.importers import ImportResult, import_config
from lorakiln.config.load import build_config, suggest_key

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "import-corpus"


def _import(text: str, tmp_path: Path, **kw) -> ImportResult:
    return import_config(text, base_dir=tmp_path, **kw)


def _header(result: ImportResult) -> str:
    return " ".join(result.draft.header)


def _built(result: ImportResult, tmp_path: Path, **missing: str):
    raw = tomllib.loads(result.text)
    for dotted, value in missing.items():
        raw.setdefault(dotted.split("__")[0], {})[dotted.split("__")[1]] = value
    return build_config(raw, base_dir=tmp_path)


def test_dataset_config_imported_alone(tmp_path: Path) -> None:
    result = _import((CORPUS / "sd_scripts_dataset.toml").read_text(), tmp_path)
    assert result.fmt == "sd-scripts" and "names no base model" in (result.problem or "")
    cfg = _built(result, tmp_path, model__pretrained_model="tiny:sd1")
    d = cfg.data
    assert (d.resolution, d.min_bucket_reso, d.max_bucket_reso, d.enable_bucket) == ((768, 768), 384, 1280, True)
    assert (d.shuffle_caption, d.keep_tokens, d.caption_extension, d.flip_aug) == (True, 1, ".txt", False)
    assert cfg.train.train_batch_size == 4
    assert d.train_data_dir == str(tmp_path / "img")  # img/10_zwx is a kohya folder: repeats and token in its name
    assert (cfg.prior.with_prior_preservation, cfg.prior.class_data_dir) == (True, str(tmp_path / "reg"))


def test_dataset_config_that_lorakiln_cannot_fold_says_so(tmp_path: Path) -> None:
    """Several folders outside a kohya parent, two resolutions, a fine-tuning subset, Windows paths."""
    result = _import((CORPUS / "sd_scripts_dataset_windows.toml").read_text(), tmp_path)
    header = _header(result)
    assert "2 training subsets in separate folders" in header
    assert "8_anna woman/ ← D:\\photos\\anna" in header and "1_ben man/ ← D:\\photos\\ben" in header
    assert "sets resolution differently (512, [768, 768])" in header and "the first, 512, is used" in header
    assert "sets keep_tokens differently (2, 3)" in header and "sets batch_size differently (2, 1)" in header
    assert "Windows paths are kept as written" in header and "prior.class_data_dir = 'D:\\\\photos\\\\people'" in header
    assert "set data.train_data_dir" in (result.problem or "")  # not silently one of the folders
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "fine-tuning metadata JSON is not read" in unmapped[
        '[[datasets]] #2 [[datasets.subsets]] metadata_file = "D:\\\\photos\\\\styles\\\\meta_cap.json"']
    assert result.draft.get("prior.class_prompt") == "person"


def test_single_loose_folder_subset_is_an_imagefolder(tmp_path: Path) -> None:
    text = ("[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = [640, 512]\nbatch_size = 2\n"
            "  [[datasets.subsets]]\n  image_dir = 'photos/cat'\n  num_repeats = 6\n  class_tokens = 'zwx cat'\n"
            "  caption_prefix = 'photo, '\n")
    result = _import(text, tmp_path)
    cfg = _built(result, tmp_path, model__pretrained_model="tiny:sd1")
    assert (cfg.data.train_data_dir, cfg.data.repeats, cfg.data.instance_prompt) == (
        str(tmp_path / "photos/cat"), 6, "zwx cat")
    assert (cfg.data.resolution, cfg.train.train_batch_size) == ((640, 512), 2)
    notes = " ".join(e.reason for e in result.draft.notes)
    assert "caption files are not read" in notes and "6_zwx cat/ ← photos/cat" in notes
    assert any("caption prefixes" in e.reason for e in result.draft.unmapped)


def test_referenced_dataset_config_is_looked_for_next_to_the_file(tmp_path: Path) -> None:
    run = tmp_path / "runs"
    run.mkdir()
    text = (CORPUS / "sd_scripts_config.toml").read_text()
    found = _import(text, run, source_path=CORPUS / "sd_scripts_config.toml")
    assert found.draft.get("data.resolution") == [768, 768] and found.draft.get("train.train_batch_size") == 4
    lost = _import(text, run)  # no source file: looked for in the output folder and the current one
    assert "sd_scripts_dataset.toml was not found" in _header(lost)
    assert any(e.option == 'dataset_config = "sd_scripts_dataset.toml"' for e in lost.draft.unmapped)
    assert lost.draft.get("data.resolution") is None


def test_dataset_config_wins_and_train_data_dir_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "ds.toml").write_text("[[datasets]]\nbatch_size = 3\n  [[datasets.subsets]]\n"
                                      "  image_dir = 'img/4_zwx'\n  num_repeats = 4\n  class_tokens = 'zwx'\n")
    cmd = ("accelerate launch train_network.py --pretrained_model_name_or_path=m.safetensors --train_data_dir=old "
           "--train_batch_size=1 --dataset_config=ds.toml --network_module=networks.lora")
    result = _import(cmd, tmp_path)
    assert (result.draft.get("train.train_batch_size"), result.draft.get("data.train_data_dir")) == (3, "img")
    notes = {e.option: e.reason for e in result.draft.notes}
    assert "ignores it when a dataset config is given" in notes['train_data_dir = "old"']


def test_docs_command_with_placeholders_is_read_not_scattered(tmp_path: Path) -> None:
    text = ("accelerate launch --num_cpu_threads_per_process 1 train_network.py \n"
            "    --pretrained_model_name_or_path=<.ckpt, .safetensors, or directory of Diffusers version model> \n"
            "    --output_dir=<output folder for trained model>  \n"
            "    --max_train_steps=400 \n    --learning_rate=1e-4 \n    --network_module=networks.lora\n")
    result = _import(text, tmp_path)
    assert result.fmt == "sd-scripts"
    assert (result.draft.get("train.max_train_steps"), result.draft.get("train.learning_rate")) == (400, 1e-4)
    assert any("5 line(s) starting with `--`" in w for w in result.draft.warnings)
    unmapped = {e.option: e.reason for e in result.draft.unmapped}
    assert "placeholder" in unmapped["--output_dir=<output folder for trained model>"]
    assert not any(o in unmapped for o in ("or", "directory", ".safetensors,"))  # no stray words
    assert "names no base model" in (result.problem or "")


def test_gui_caption_sentinel_is_not_copied(tmp_path: Path) -> None:
    result = _import('pretrained_model_name_or_path = "m.safetensors"\ntrain_data_dir = "t"\n'
                     'caption_extension = ".none-use-foldername"\n', tmp_path)
    assert result.draft.get("data.caption_extension") is None  # lorakiln's .txt, not sd-scripts' .caption
    assert "folder's <token> [class]" in _header(result)


def test_flat_network_dimm_suggests_network_dim() -> None:
    """A flat typo is compared with field names, not dotted keys (`network.conv_dim` used to win)."""
    assert suggest_key("network_dimm") == "did you mean 'network.network_dim'?"
    assert suggest_key("conv_dimm") == "did you mean 'network.conv_dim'?"
    assert suggest_key("unet_lrr", "train") == "did you mean 'train.unet_lr'?"
    assert suggest_key("trian") == "did you mean '[train]'?"


def test_instance_data_dir_hub_id_or_local_folder(tmp_path: Path) -> None:
    cmd = ("accelerate launch train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path=m.safetensors "
           "--instance_prompt=sks --instance_data_dir={}")
    hub = _import(cmd.format("linoyts/B-LoRA_teddy_bear"), tmp_path)
    assert (hub.draft.get("data.dataset_name"), hub.draft.get("data.train_data_dir")) == (
        "linoyts/B-LoRA_teddy_bear", None)
    assert "has the shape of a Hugging Face Hub id" in _header(hub) and "set data.train_data_dir" in _header(hub)
    (tmp_path / "data").mkdir()
    local = _import(cmd.format("data/dog"), tmp_path)  # its folder is here: a local path, even if dog is not yet
    assert (local.draft.get("data.train_data_dir"), local.draft.get("data.dataset_name")) == ("data/dog", None)
