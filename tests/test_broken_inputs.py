"""Every CLI verb that reads a LoRA, embedding or .safetensors file, on every file of the broken-input
corpus (`tests/fixtures/broken/`, written by `scripts/make_broken_fixtures.py`): exit code 2, one
`error:` line naming the file, no traceback, and the input left as it was.

The sound LoRA the corpus is made from goes through the same command lines first and must pass,
so a refusal here is the file's doing, not a wrong command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lorakiln.cli import main

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
Argv = Callable[[Path, Path], list[str]]


def _loras(file: Path) -> str:
    return str(file.parent)


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
    # training checks the file with the rest of the config, before any model loads (its NaN and
    # layout refusals belong to training: a partial LoRA is refused there for its missing keys)
    "train --set network.network_weights": (lambda f, w: [
        "train", str(ROOT / "examples" / "toy-quickstart" / "config.toml"), "--set", 'model.pretrained_model="tiny:sd1"',
        "--set", f'network.network_weights="{f}"', "--set", f'output.output_dir="{w / "run"}"'], STRUCTURE),
}
#: Verbs that take no sound LoRA file to compare with: extract reads models, and training would
#: refuse the corpus's small LoRA for not covering the whole network.
NO_CONTROL = ("extract --tuned", "train --set network.network_weights")
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
