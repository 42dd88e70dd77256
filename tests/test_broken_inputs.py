"""Every CLI verb that reads a LoRA, embedding or .safetensors file, on every file of the broken-input
corpus (`tests/fixtures/broken/`, written by `scripts/make_broken_fixtures.py`): exit code 2, one
`error:` line naming the file, no traceback, and the input left as it was.

The sound LoRA the corpus is made from goes through the same command lines first and must pass,
so a refusal here is the file's doing, not a wrong command line. The structure-broken files are
also given as a base model and a VAE, and every writing verb gets an output path that is, or lies
under, an existing file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lorakiln.cli import main
from lorakiln.errors import FileFormatError
from lorakiln.safetensors_check import read_layout

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "broken"
INTACT = CORPUS / "intact" / "sd1.safetensors"

#: Broken files by what is broken, and so which verbs can tell.
STRUCTURE = ("empty", "truncated-header", "truncated-data", "oversized-header", "header-not-json", "bad-offsets",
             "pickle")
VALUES = ("nan", "inf", "nan-embedding")
LAYOUT = ("wrong-rank",)
MODEL = ("wrong-family-sdxl",)  # a sound SDXL LoRA: only a verb with a (tiny:sd1) base model can refuse it

FAST = ["--steps", "1", "--size", "64x64", "--sampler", "Euler"]
TOY_CONFIG = ROOT / "examples" / "toy-quickstart" / "config.toml"
Argv = Callable[[Path, Path], list[str]]


def _loras(file: Path) -> str:
    return str(file.parent)


def _train(work: Path, setting: str) -> list[str]:
    """`train` on the toy example with the tiny SD 1.x model, writing under `work`, plus `setting`."""
    return ["train", str(TOY_CONFIG), "--set", 'model.pretrained_model="tiny:sd1"', "--set",
            f'output.output_dir="{work / "run"}"', "--set", setting]


#: verb → (argv from the input file and a work folder, which file groups it must refuse).
VERBS: dict[str, tuple[Argv, tuple[str, ...]]] = {
    "info": (lambda f, w: ["lora", "info", str(f)], STRUCTURE + VALUES + LAYOUT),
    "convert": (lambda f, w: ["lora", "convert", str(f), str(w / "out.safetensors"), "--to", "diffusers"],
                STRUCTURE + VALUES + LAYOUT),
    "resize": (lambda f, w: ["lora", "resize", str(f), str(w / "out.safetensors"), "--rank", "1"],
               STRUCTURE + VALUES + LAYOUT),
    "merge": (lambda f, w: ["lora", "merge", str(w / "out.safetensors"), "--lora", str(w / "other.safetensors"),
                            "--lora", str(f)], STRUCTURE + VALUES + LAYOUT),
    "merge-into-model": (lambda f, w: ["lora", "merge", str(w / "merged.safetensors"), "--model", "tiny:sd1",
                                       "--lora", str(f)], STRUCTURE + VALUES + LAYOUT + MODEL),
    "ziplora": (lambda f, w: ["lora", "ziplora", str(w / "zip.safetensors"), "--model", "tiny:sd1", "--subject",
                              str(w / "other.safetensors"), "--style", str(f), "--subject-prompt", "a photo",
                              "--style-prompt", "a painting", "--steps", "1", "--latents", "random",
                              "--num-latents", "1", "--resolution", "64", "--device", "cpu"],
                STRUCTURE + VALUES + LAYOUT + MODEL),
    "generate --lora": (lambda f, w: ["generate", "--model", "tiny:sd1", "--prompt", f"a photo <lora:{f.stem}:1>",
                                      "--lora-dir", _loras(f), "--output-dir", str(w / "images"), *FAST],
                        STRUCTURE + VALUES + LAYOUT + MODEL),
    "grid": (lambda f, w: ["grid", "--model", "tiny:sd1", "--prompt", f"a photo <lora:{f.stem}:1>", "--x",
                           "CFG Scale: 5", "--lora-dir", _loras(f), "--output-dir", str(w / "grids"), *FAST],
             STRUCTURE + VALUES + LAYOUT + MODEL),
    "generate --embeddings-dir": (lambda f, w: ["generate", "--model", "tiny:sd1", "--prompt", f"a photo of {f.stem}",
                                                "--embeddings-dir", _loras(f), "--output-dir", str(w / "images"),
                                                *FAST], STRUCTURE + ("nan-embedding",)),
    "extract --tuned": (lambda f, w: ["lora", "extract", "--base", "tiny:sd1", "--tuned", str(f),
                                      str(w / "extracted.safetensors"), "--rank", "1"], STRUCTURE),
    # training checks the file's structure with the rest of the config, before any model loads;
    # its values and rank layout once the network is built, before the file's keys are matched
    "train --set network.network_weights": (lambda f, w: _train(w, f'network.network_weights="{f}"'),
                                            STRUCTURE + VALUES + LAYOUT + MODEL),
    "train --set model.pretrained_model": (lambda f, w: _train(w, f'model.pretrained_model="{f}"'), STRUCTURE),
    "train --set model.vae": (lambda f, w: _train(w, f'model.vae="{f}"'), STRUCTURE),
    "generate --model": (lambda f, w: ["generate", "--model", str(f), "--prompt", "a photo", "--output-dir",
                                       str(w / "images"), *FAST], STRUCTURE),
    "generate --vae": (lambda f, w: ["generate", "--model", "tiny:sd1", "--vae", str(f), "--prompt", "a photo",
                                     "--output-dir", str(w / "images"), *FAST], STRUCTURE),
}
#: Verbs that take no sound LoRA file to compare with: extract and the base-model verbs read
#: models, and training would refuse the corpus's small LoRA for not covering the whole network.
NO_CONTROL = ("extract --tuned", "train --set network.network_weights", "train --set model.pretrained_model",
              "train --set model.vae", "generate --model", "generate --vae")
#: Verbs whose message is the structure check's own, word for word (not the library's text).
SHARED_MESSAGE = ("generate --model", "generate --vae")
CASES = [(verb, name) for verb, (_, names) in VERBS.items() for name in names]


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One lorakiln home for the whole session, so `tiny:sd1` is built once."""
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path_factory.getbasetemp() / "lorakiln-home"))


def _stage(source: Path, work: Path) -> Path:
    """Copy `source` into its own folder under `work` (the LoRA/embeddings folder of generate),
    with a sound second LoRA beside the work folder for two-input verbs."""
    folder = work / "inputs"
    folder.mkdir(parents=True)
    shutil.copyfile(INTACT, work / "other.safetensors")
    target = folder / source.name
    shutil.copyfile(source, target)
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_corpus_is_what_the_script_writes(tmp_path: Path) -> None:
    """The committed files are the generator's output, and every one of them is covered here."""
    spec = importlib.util.spec_from_file_location("make_broken_fixtures", ROOT / "scripts" / "make_broken_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.corpus()
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.safetensors")}
    assert on_disk == set(expected)
    for name, data in expected.items():
        assert (CORPUS / name).read_bytes() == data, f"{name} differs: run scripts/make_broken_fixtures.py"
    covered = {f"{n}.safetensors" for n in STRUCTURE + VALUES + LAYOUT + MODEL}
    assert covered == set(expected) - {"intact/sd1.safetensors"}


@pytest.mark.parametrize("verb", [v for v in VERBS if v not in NO_CONTROL])
def test_every_verb_accepts_the_intact_lora(verb: str, tmp_path: Path, home: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv, _ = VERBS[verb]
    staged = _stage(INTACT, tmp_path)
    code = main(argv(staged, tmp_path))
    err = capsys.readouterr().err
    assert code == 0, err
    assert _sha(staged) == _sha(INTACT)


@pytest.mark.parametrize(("verb", "name"), CASES)
def test_broken_input_is_refused_with_one_message(verb: str, name: str, tmp_path: Path, home: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = CORPUS / f"{name}.safetensors"
    staged = _stage(source, tmp_path)
    argv, _ = VERBS[verb]
    code = main(argv(staged, tmp_path))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert staged.name in err[err.index("error:"):], err  # the message (a config report: its next line)
    assert "Traceback" not in err
    if verb in SHARED_MESSAGE:
        with pytest.raises(FileFormatError) as shared:
            read_layout(staged)
        assert f"error: {shared.value}" in err
    assert staged.read_bytes() == source.read_bytes()  # refused, never changed
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != staged.parent
               and p.name != "other.safetensors"]
    assert written == []  # nothing written: no output, no temporary file


def test_the_sdxl_lora_is_sound_for_sdxl(tmp_path: Path, home: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`wrong-family-sdxl` is refused on SD 1.x for its family alone: tiny:sdxl applies it."""
    staged = _stage(CORPUS / "wrong-family-sdxl.safetensors", tmp_path)
    code = main(["generate", "--model", "tiny:sdxl", "--prompt", f"a photo <lora:{staged.stem}:1>", "--lora-dir",
                 str(staged.parent), "--output-dir", str(tmp_path / "images"), *FAST])
    assert code == 0, capsys.readouterr().err


def test_an_sd1_lora_on_sdxl_is_refused_naming_both(tmp_path: Path, home: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The other direction of `wrong-family-sdxl`: the intact SD 1.x LoRA on the tiny SDXL model."""
    staged = _stage(INTACT, tmp_path)
    code = main(["generate", "--model", "tiny:sdxl", "--prompt", f"a photo <lora:{staged.stem}:1>", "--lora-dir",
                 str(staged.parent), "--output-dir", str(tmp_path / "images"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{staged.name} is a LoRA for sd1, but the loaded base model is sdxl" in err
    assert not (tmp_path / "images").exists()


def test_network_weights_that_do_not_fit_name_the_file(tmp_path: Path, home: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A sound LoRA the network cannot hold (the corpus's small one has text-encoder modules; the
    run trains the U-Net only) is refused from its header before any model loads, and the message
    names the config key, the file and the setting to change."""
    staged = _stage(INTACT, tmp_path)
    code = main(_train(tmp_path, f'network.network_weights="{staged}"'))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"network.network_weights: {staged.name} has text-encoder modules" in err, err
    assert "found before loading any model" in err and "network_train_unet_only = false" in err
    assert not (tmp_path / "run").exists()


#: Writing verbs → argv from the work folder and an output path. Each output either is an
#: existing file where a folder is wanted ("file") or lies under one ("under").
OUTPUT_VERBS: dict[str, tuple[Callable[[Path, Path], list[str]], tuple[str, ...]]] = {
    "generate": (lambda w, o: ["generate", "--model", "tiny:sd1", "--prompt", "a photo", "--output-dir", str(o),
                               *FAST], ("file", "under")),
    "grid": (lambda w, o: ["grid", "--model", "tiny:sd1", "--prompt", "a photo", "--x", "CFG Scale: 5",
                           "--output-dir", str(o), *FAST], ("file", "under")),
    "toy dataset": (lambda w, o: ["toy", "dataset", "--concept", "-n", "1", str(o)], ("file", "under")),
    "toy pretrain": (lambda w, o: ["toy", "pretrain", "--out", str(w / "toy.safetensors"), "--work", str(o)],
                     ("file", "under")),
    "dataset init": (lambda w, o: ["dataset", "init", str(w / "photos"), "--token", "zwx", "-o", str(o)],
                     ("file", "under")),
    "dataset sheet": (lambda w, o: ["dataset", "sheet", str(w / "photos"), "-o", str(o / "sheet.png")], ("file",)),
    "config doc": (lambda w, o: ["config", "doc", "--output", str(o / "doc.md")], ("file",)),
    "config import": (lambda w, o: ["config", "import", str(w / "kohya.sh"), "-o", str(o / "run.toml")], ("file",)),
}
OUTPUT_CASES = [(verb, where) for verb, (_, wheres) in OUTPUT_VERBS.items() for where in wheres]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a verb loads a base model or starts pretraining: an output mistake must be
    found before that work, not after it."""
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("the work started before the output path was checked")

    monkeypatch.setattr("lorakiln.models.configured.load_configured_model", refuse)
    monkeypatch.setattr("lorakiln.toyworld.pretrain.pretrain", refuse)


@pytest.mark.parametrize(("verb", "where"), OUTPUT_CASES)
def test_an_output_that_is_or_lies_under_a_file_is_refused(verb: str, where: str, tmp_path: Path, home: None,
                                                           no_model_loads: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`where` = "file": the output folder is an existing file; "under": its parent is one (for
    file outputs, "file" puts the file where a folder must be)."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 64), "orange").save(tmp_path / "photos" / "a.png")
    (tmp_path / "kohya.sh").write_text("accelerate launch train_network.py --pretrained_model_name_or_path=m "
                                       "--train_data_dir=photos --output_dir=out\n", encoding="utf-8")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("the user's file\n", encoding="utf-8")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv, _ = OUTPUT_VERBS[verb]
    code = main(argv(tmp_path, blocker if where == "file" else blocker / "sub"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and "notes.txt" in errors[0], err
    assert "Traceback" not in err
    assert blocker.read_text(encoding="utf-8") == "the user's file\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
