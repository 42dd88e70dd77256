"""Write toy-world training folders in the two layouts lorakiln scans.

* ImageFolder: `00000.png …` + `metadata.jsonl` rows `{"file_name": …, "prompt": …}` — the
  caption column is lorakiln's (and the diffusers example dataset's) default, so no config
  option is needed.
* kohya: `<repeats>_world/00000.png` + `00000.txt` (or `<repeats>_zwx/` for the concept).

Both also get `scenes.jsonl` at the top: one line per image with its caption and the exact
scene (shape, colour, background, size, centre, rotation), so an evaluation can compare the
detector with ground truth. Neither scanner reads it (it is not a metadata file name and not
an image). Same arguments → byte-identical files: scenes are seeded and Pillow writes PNGs
without timestamps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lorakiln.data.imagefolder import DEFAULT_CAPTION_COLUMN, DEFAULT_IMAGE_COLUMN
from lorakiln.errors import DatasetError
from lorakiln.io_guard import check_output
from lorakiln.toyworld.render import render
from lorakiln.toyworld.world import CONCEPT_TOKEN, Scene, Split, caption, concept_scenes, sample_scenes

Layout = Literal["imagefolder", "kohya"]
#: Ground-truth manifest written next to every dataset (not read by the scanners).
MANIFEST = "scenes.jsonl"


def _prepare(folder: str | os.PathLike[str]) -> Path:
    """Create `folder`; refuse a file or a non-empty folder, so two datasets never mix silently and
    nothing already there (a user's own images) is ever overwritten."""
    root = Path(folder).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder; nothing was written. Choose a new folder for the "
                           "toy dataset")
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root} already holds files; nothing was written. Choose a new or empty folder for "
                           "the toy dataset")
    check_output(root, [], verb="toy dataset", force=True, folder_output=True)  # its parents: folders, writable
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_lines(path: Path, rows: Sequence[dict[str, object]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_images(folder: Path, scenes: Sequence[Scene], size: int, captions_as_txt: bool,
                  prefix: str = "") -> list[dict[str, object]]:
    """Render every scene to `folder/NNNNN.png` (+ `.txt`); return its manifest rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for index, scene in enumerate(scenes):
        name = f"{index:05d}.png"
        text = caption(scene)
        render(scene, size).save(folder / name, format="PNG")
        if captions_as_txt:
            (folder / name).with_suffix(".txt").write_text(text + "\n", encoding="utf-8", newline="\n")
        rows.append({"file_name": prefix + name, "caption": text, "scene": scene.to_dict()})
    return rows


def write_scenes(folder: str | os.PathLike[str], scenes: Sequence[Scene], *, layout: Layout = "imagefolder",
                 repeats: int = 1, size: int = 64, subset: str = "world") -> Path:
    """Write `scenes` as a dataset in `layout`; returns the folder to use as train_data_dir.

    kohya puts them in `<repeats>_<subset>/`. ImageFolder has no per-folder repeats (set
    `repeats` in the training config instead), so `repeats` other than 1 is refused there
    rather than silently ignored.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    root = _prepare(folder)
    if layout == "kohya":
        sub = f"{repeats}_{subset}"
        rows = _write_images(root / sub, scenes, size, captions_as_txt=True, prefix=f"{sub}/")
    elif layout == "imagefolder":
        if repeats != 1:
            raise ValueError("an ImageFolder dataset has no per-folder repeats; write it with repeats=1 "
                             "and set `repeats` in the training config, or use layout='kohya'")
        rows = _write_images(root, scenes, size, captions_as_txt=False)
        _write_lines(root / "metadata.jsonl", [{DEFAULT_IMAGE_COLUMN: r["file_name"], DEFAULT_CAPTION_COLUMN: r["caption"]}
                                               for r in rows])
    else:
        raise ValueError(f"layout must be 'imagefolder' or 'kohya', got {layout!r}")
    _write_lines(root / MANIFEST, rows)
    return root


def write_world_dataset(folder: str | os.PathLike[str], n: int, seed: int, split: Split = "train",
                        layout: Layout = "imagefolder", repeats: int = 1, size: int = 64) -> Path:
    """`n` base-world images from `split` (see `world.sample_scenes`), captioned
    "a red circle on a grey background"."""
    return write_scenes(folder, sample_scenes(n, seed, split), layout=layout, repeats=repeats, size=size)


def write_concept_dataset(folder: str | os.PathLike[str], n: int = 10, seed: int = 0, repeats: int = 10,
                          size: int = 64) -> Path:
    """The LoRA training set: kohya `<repeats>_zwx/` with `n` concept images (varied
    background, size, position, rotation) captioned "a zwx on a <background> background"."""
    return write_scenes(folder, concept_scenes(n, seed), layout="kohya", repeats=repeats, size=size,
                        subset=CONCEPT_TOKEN)
