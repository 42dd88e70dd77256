"""`lorakiln caption` never writes a caption over an image, whatever --caption-extension says.

The refusal comes before any model is loaded, so these run without one (the default model
names a hub repo that is never contacted).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from captioning_support import MakeImage

from lorakiln.captioning.files import CaptionFiles, OutputOptions, caption_folder
from lorakiln.cli import main
from lorakiln.errors import ConfigError
from lorakiln.io_guard import OverwriteInputError


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path: Path, make_image: MakeImage) -> Path:
    root = tmp_path / "train"
    make_image(root / "10_zwx" / "a.jpg")
    make_image(root / "10_zwx" / "a.png", color=(0, 0, 255))  # a.jpg's caption as .png would replace it
    (root / "10_zwx" / "b.gif").write_bytes(b"GIF89a: not trained on, still the user's file")
    make_image(root / "10_zwx" / "b.webp")
    return root


@pytest.mark.parametrize("ext", [".png", "png", ".gif", ".TIFF", ".psd", ".jpeg", "/x"])
def test_image_extension_is_refused_before_the_model_loads(folder: Path, ext: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _digest(folder)
    assert main(["caption", str(folder), "--caption-extension", ext, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the images" in err and "Traceback" not in err and "loading" not in err
    assert _digest(folder) == before


@pytest.mark.parametrize("ext", [".txt", ".caption", "tags"])
def test_text_extensions_are_fine(ext: str) -> None:
    assert CaptionFiles(ext, overwrite=False).extension.startswith(".")


def test_caption_target_that_is_an_image_is_refused(folder: Path) -> None:
    """Behind the extension rule: a caption file that *is* one of the images (here a symlink
    `a.txt` → `a.png`) is refused by identity before the captioner is even built."""
    (folder / "10_zwx" / "a.txt").symlink_to(folder / "10_zwx" / "a.png")
    before = _digest(folder)

    def load():  # type: ignore[no-untyped-def]
        raise AssertionError("the model must not be loaded")

    with pytest.raises(OverwriteInputError, match="one of the input images"):
        caption_folder(folder, OutputOptions(overwrite=True, progress=False), load)
    assert _digest(folder) == before


def test_config_error_type(folder: Path) -> None:
    with pytest.raises(ConfigError):
        CaptionFiles(".PNG", overwrite=True)
