"""`lorakiln dataset check` names what the loader does to unusual files and folder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lorakiln.cli import main


def test_check_reports_sixteen_bit_conversion_and_background(tmp_path: Path, noise_image, capsys) -> None:
    folder = tmp_path / "train" / "10_zwx"
    noise_image(folder / "a.png", (64, 64), caption="zwx, red")
    ramp = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (64, 1))
    Image.fromarray(ramp).save(folder / "scan16.png")
    (folder / "scan16.txt").write_text("zwx, scan", encoding="utf-8")
    cut = Image.new("RGBA", (64, 64), (200, 10, 10, 255))
    cut.putpixel((0, 0), (0, 0, 0, 0))
    cut.save(folder / "cut.png")
    (folder / "cut.txt").write_text("zwx, cut out", encoding="utf-8")
    assert main(["dataset", "check", str(tmp_path / "train"), "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "16-bit grayscale (I;16): converted to 8-bit RGB (value ÷ 257) (scan16.png)" in out
    assert "transparent pixels (cut.png); they are trained composited on a white (255, 255, 255) background" in out


def test_check_strict_fails_on_a_folder_without_trigger_word(tmp_path: Path, noise_image, capsys) -> None:
    folder = tmp_path / "train" / "10_zwx"
    noise_image(folder / "a.png", (64, 64), caption="zwx, a dog")
    argv = ["dataset", "check", str(tmp_path / "train"), "--resolution", "64", "--no-images", "--strict"]
    assert main(argv) == 0  # the same folder with a trigger word passes strict
    capsys.readouterr()
    folder.rename(tmp_path / "train" / "10_")
    assert main(argv) == 1
    assert "[no-trigger-word]" in capsys.readouterr().out
