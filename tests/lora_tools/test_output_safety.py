"""The LoRA tools' outputs: never over an input (whatever the flags, however the path is spelled),
never into a folder or under a file, and a full disk reported in one line with nothing lost."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lorakiln.cli import main

INTACT = Path(__file__).resolve().parents[1] / "fixtures" / "broken" / "intact" / "sd1.safetensors"
FAST = ["--steps", "1", "--size", "64x64", "--sampler", "Euler"]


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAKILN_HOME", str(tmp_path_factory.getbasetemp() / "lorakiln-home"))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """``loras/in.safetensors`` and ``loras/other.safetensors`` (sound SD 1.x LoRAs) and a copy of
    the tiny SD 1.x single-file model, ``models/base.safetensors``."""
    (tmp_path / "loras").mkdir()
    shutil.copyfile(INTACT, tmp_path / "loras" / "in.safetensors")
    shutil.copyfile(INTACT, tmp_path / "loras" / "other.safetensors")
    return tmp_path


def _spell(target: Path, how: str, work: Path) -> str:
    """Another name for `target`: the same string, a ``dir/../dir/x`` detour, a symlink, a hard link."""
    if how == "same":
        return str(target)
    if how == "dotdot":
        return f"{target.parent}/../{target.parent.name}/{target.name}"
    link = work / f"link-{how}.safetensors"
    if how == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)
    return str(link)


#: verb → (argv for an output path, the input that output names)
OVERWRITES: dict[str, Callable[[Path, str], list[str]]] = {
    "convert": lambda w, out: ["lora", "convert", str(w / "loras" / "in.safetensors"), out, "--to", "diffusers",
                               "--force"],
    "resize": lambda w, out: ["lora", "resize", str(w / "loras" / "in.safetensors"), out, "--rank", "1", "--force"],
    "merge": lambda w, out: ["lora", "merge", out, "--lora", str(w / "loras" / "in.safetensors"), "--lora",
                             str(w / "loras" / "other.safetensors"), "--force"],
    "merge --model": lambda w, out: ["lora", "merge", out, "--model", "tiny:sd1", "--lora",
                                     str(w / "loras" / "in.safetensors"), "--force"],
    "ziplora": lambda w, out: ["lora", "ziplora", out, "--model", "tiny:sd1", "--subject",
                               str(w / "loras" / "other.safetensors"), "--style", str(w / "loras" / "in.safetensors"),
                               "--subject-prompt", "a", "--style-prompt", "b", "--force"],
}


@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("verb", list(OVERWRITES))
def test_no_verb_writes_over_its_input(verb: str, how: str, work: Path, home: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = work / "loras" / "in.safetensors"
    before = source.read_bytes()
    out = _spell(source, how, work)
    assert main(OVERWRITES[verb](work, out)) == 2
    err = capsys.readouterr().err
    assert "never writes over its inputs" in err and "Traceback" not in err
    assert source.read_bytes() == before
    assert Path(out).read_bytes() == before  # the other name still reaches the untouched input
    if how == "symlink":
        assert Path(out).is_symlink()


@pytest.mark.parametrize("how", ["same", "dotdot", "symlink"])
def test_merge_and_extract_never_write_over_the_model(how: str, work: Path, tiny_sd1_file: Path, home: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = work / "base.safetensors"
    shutil.copyfile(tiny_sd1_file, base)
    before = base.read_bytes()
    out = _spell(base, how, work)
    merge = ["lora", "merge", out, "--model", str(base), "--lora", str(work / "loras" / "in.safetensors"), "--force"]
    extract = ["lora", "extract", "--base", "tiny:sd1", "--tuned", str(base), out, "--rank", "1", "--force"]
    for argv in (merge, extract):
        assert main(argv) == 2
        assert "never writes over its inputs" in capsys.readouterr().err
    assert base.read_bytes() == before


@pytest.mark.parametrize("verb", ["convert", "resize", "merge"])
def test_output_that_is_a_folder_or_under_a_file(verb: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = work / "taken.safetensors"
    folder.mkdir()
    (work / "notes.txt").write_text("a file, not a folder")
    for out, message in ((folder, "is an existing folder"), (work / "notes.txt" / "x.safetensors",
                                                              "notes.txt is a file, not a folder")):
        assert main(OVERWRITES[verb](work, str(out))) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert list(folder.iterdir()) == []


def test_generate_output_dir_that_is_a_file(work: Path, home: None, capsys: pytest.CaptureFixture[str]) -> None:
    taken = work / "images"
    taken.write_text("a file")
    assert main(["generate", "--model", "tiny:sd1", "--prompt", "a photo", "--output-dir", str(taken), *FAST]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and str(taken) in err
    assert taken.read_text() == "a file"


def _disk_full(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_full(path: Path, data: bytes) -> int:
    """`Path.write_bytes` on a disk that fills up half way through the file."""
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("verb", ["convert", "resize", "merge", "merge --model"])
@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_loses_nothing(verb: str, existing: bool, work: Path, home: None, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out" / "result.safetensors"
    if existing:
        out.parent.mkdir()
        out.write_bytes(b"the previous result")
    inputs = {p: p.read_bytes() for p in (work / "loras").iterdir()}
    from lorakiln.models.configured import ensure_tiny_model

    ensure_tiny_model("sd1")  # built before the disk "fills up"
    monkeypatch.setattr(Path, "write_bytes", _half_then_full)
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda _t, f, metadata=None: _half_then_full(Path(f), b"x" * 64))
    assert main(OVERWRITES[verb](work, str(out))) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"could not write {out}: no space left on device" in lines[0] and "Nothing was lost" in lines[0]
    assert {p: p.read_bytes() for p in inputs} == inputs
    assert (out.read_bytes() == b"the previous result") if existing else not out.exists()
    assert [p.name for p in out.parent.iterdir()] == ([out.name] if existing else [])  # no temporary left


def test_generate_full_disk_names_the_image(work: Path, home: None, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _disk_full)
    images = work / "images"
    assert main(["generate", "--model", "tiny:sd1", "--prompt", "a photo", "--output-dir", str(images), *FAST]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"could not write {re.escape(str(images))}/00000-\d+\.png: no space left on device", err)
    assert "Traceback" not in err
    assert list(images.iterdir()) == []


def test_cli_reports_disk_errors_in_one_line_and_keeps_other_errors(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Any verb: ENOSPC/EACCES/EROFS are one line naming the file; other OSErrors stay tracebacks (bugs)."""
    from lorakiln.lora_tools import command

    for code, words in ((errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
                        (errno.EROFS, "the file system is read-only")):
        def fail(_args: object, code: int = code) -> int:
            raise OSError(code, os.strerror(code), "/data/out.safetensors")

        monkeypatch.setattr(command, "run_info", fail)
        assert main(["lora", "info", "x.safetensors"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: /data/out.safetensors: {words}; "
            + ("free some space" if code == errno.ENOSPC else "check the folder's permissions")
            + " (or choose another output folder) and run the command again")

    def broken(_args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/dev/sdz")

    monkeypatch.setattr(command, "run_info", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(["lora", "info", "x.safetensors"])
