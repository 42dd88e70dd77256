"""The never-overwrite-an-input rule, on every spelling of the same file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorakiln.io_guard import OverwriteInputError, refuse_overwriting_inputs, same_file


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    path = tmp_path / "a" / "in.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"x")
    return path


def test_same_path_other_spelling_symlink_and_hard_link_are_refused(src: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    spellings = [src, tmp_path / "a" / ".." / "a" / "in.safetensors", link, hard]
    for output in spellings:
        assert same_file(output, src)
        with pytest.raises(OverwriteInputError, match="never writes over its inputs"):
            refuse_overwriting_inputs(output, [src], verb="lora convert")
    assert src.read_bytes() == b"x"


def test_another_file_and_a_missing_output_pass(src: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"y")
    refuse_overwriting_inputs(other, [src, None], verb="lora convert")
    refuse_overwriting_inputs(tmp_path / "new.safetensors", [src], verb="lora convert")
    assert not same_file(tmp_path / "new.safetensors", src)


def test_a_folder_output_holding_an_input_is_refused(src: Path, tmp_path: Path) -> None:
    with pytest.raises(OverwriteInputError, match="contains the input"):
        refuse_overwriting_inputs(src.parent, [src], verb="lora convert", folder_output=True)
    refuse_overwriting_inputs(tmp_path / "elsewhere", [src], verb="lora convert", folder_output=True)
