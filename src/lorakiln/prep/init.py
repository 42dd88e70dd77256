"""`lorakiln dataset init`: turn a folder of photos into a kohya training folder.

The preparation of the kohya_ss + AUTOMATIC1111 LoRA walkthrough, automated: photos with "unique names (excluding the file extension)" in
one `<repeats>_<token>` folder, repeats chosen so images × repeats × epochs ÷ batch size lands at
1500–2000 steps for a character, with "more repeats than epochs" and "epochs in the 5 to 20
range". On top of that, the things that silently go wrong when people do it by hand:

* EXIF orientation is applied to the pixels (a phone portrait stored sideways would train
  sideways in any tool that ignores the tag);
* formats Pillow reads but trainers skip (TIFF, GIF, …) are converted; JPEG stays JPEG, and a file
  that needs no change is copied byte for byte (no re-encoding loss);
* pixels other trainers misread are made 8-bit with their real range (`data/image_modes.py`): a
  16-bit PNG (mode `I;16`) would otherwise be clipped to white, a CMYK JPEG read with a
  tool-dependent formula; transparency is kept (lorakiln's loader puts it on white);
* stems are made unique (`a.jpg` + `a.png` would share `a.txt`);
* same-stem caption files (`.txt`, `.caption`, …) travel with their image, as `.txt`;
* an animated GIF/WebP/PNG becomes a PNG of its first frame (what any trainer would read), and
  the summary says so;
* every file written gets the permissions a new file of the user's gets (0666 less the umask,
  `atomic.apply_umask`), not the source's: a read-only photo library must not give a training
  folder whose captions `lorakiln caption` and `dataset edit` cannot write next to.

The source folder is only read. The destination subfolder must not exist yet or be empty, so
nothing is ever overwritten, and a destination that is the source, lies inside it or holds it is
refused (`io_guard`), whatever the spelling (symlinks, `..`).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from lorakiln.atomic import apply_umask
from lorakiln.data.dataset import IMAGE_EXTENSIONS
from lorakiln.data.files import list_images
from lorakiln.data.image_modes import to_8bit
from lorakiln.data.images import flatten_to_rgb
from lorakiln.data.scan_common import KNOWN_CAPTION_EXTENSIONS
from lorakiln.errors import DatasetError
from lorakiln.io_guard import check_output

Kind = Literal["character", "object", "style"]
#: Target optimizer steps per kind. Character/object: the kohya_ss walkthrough ("between 1500 and 2000 for
#: character training"). Styles need more variety and steps; lorakiln's default range.
STEP_RANGES: dict[str, tuple[int, int]] = {"character": (1500, 2000), "object": (1500, 2000),
                                           "style": (3000, 4000)}
#: The kohya_ss walkthrough: "Epochs in the 5 to 20 range are reasonable".
EPOCH_RANGE = (5, 20)
#: Extra formats converted on import (Pillow decodes them; trainers usually skip them).
CONVERTIBLE = frozenset({".tif", ".tiff", ".gif"})
_ORIENTATION_TAG = 0x0112
JPEG_QUALITY = 95
#: Modes every trainer reads right; anything else (16-bit, float, CMYK, palette, 1-bit) is re-encoded.
PLAIN_MODES = frozenset({"RGB", "RGBA", "L", "LA"})


@dataclass(frozen=True)
class RepeatsPlan:
    """Repeats and epochs for a target step range, with the arithmetic spelled out."""

    repeats: int
    epochs: int
    steps: int
    images: int
    batch_size: int
    target: tuple[int, int]

    def explain(self) -> str:
        per_epoch = math.ceil(self.images * self.repeats / self.batch_size)
        inside = self.target[0] <= self.steps <= self.target[1]
        note = "within" if inside else "closest reachable to"
        return (f"{self.images} images x {self.repeats} repeats = {self.images * self.repeats} samples per epoch; "
                f"/ batch size {self.batch_size} = {per_epoch} steps per epoch; x {self.epochs} epochs = "
                f"{self.steps} steps ({note} the {self.target[0]}–{self.target[1]} target). "
                "Buckets may add a few steps: each bucket's last batch is rounded up.")


def plan_repeats(images: int, *, kind: Kind = "character", batch_size: int = 1,
                 target: tuple[int, int] | None = None) -> RepeatsPlan:
    """Repeats × epochs whose step count lands in the target range (the kohya_ss community rules).

    Among pairs with epochs in 5–20 the choice prefers, in order: steps inside the range, more
    repeats than epochs, the step count nearest the middle of the range, fewer epochs.
    """
    if images < 1:
        raise DatasetError("no images to plan repeats for")
    low, high = target or STEP_RANGES[kind]
    middle = (low + high) / 2
    best: tuple[tuple[float, ...], RepeatsPlan] | None = None
    for epochs in range(EPOCH_RANGE[0], EPOCH_RANGE[1] + 1):
        for repeats in range(1, 1001):
            steps = math.ceil(images * repeats / batch_size) * epochs
            key = (0 if low <= steps <= high else 1, 0 if repeats >= epochs else 1, abs(steps - middle), epochs)
            if best is None or key < best[0]:
                best = (key, RepeatsPlan(repeats, epochs, steps, images, batch_size, (low, high)))
            if steps > high:
                break
    assert best is not None
    return best[1]


@dataclass
class InitResult:
    """What `init_dataset` wrote, and what it skipped and why."""

    folder: Path
    copied: list[Path] = field(default_factory=list)
    converted: list[tuple[Path, str]] = field(default_factory=list)  # (written file, why)
    renamed: list[tuple[Path, Path]] = field(default_factory=list)  # (source, written)
    captions: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    plan: RepeatsPlan | None = None

    @property
    def num_images(self) -> int:
        return len(self.copied) + len(self.converted)

    def format(self) -> str:
        lines = [f"created {self.folder} with {self.num_images} image(s): {len(self.copied)} copied unchanged, "
                 f"{len(self.converted)} converted; {self.captions} caption file(s) carried over"]
        reasons: dict[str, int] = {}
        for _, why in self.converted:
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  converted ({why}): {n}" for why, n in sorted(reasons.items())]
        lines += [f"  renamed {src} -> {dst.name} (same name as another image)" for src, dst in self.renamed[:10]]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped]
        if self.plan:
            lines.append(f"repeats: {self.plan.explain()}")
            lines.append(f"  set train.max_train_epochs = {self.plan.epochs} in your run TOML")
        return "\n".join(lines)


def folder_name(repeats: int, token: str, class_token: str | None) -> str:
    """kohya's `<repeats>_<token>[ <class>]`."""
    return f"{repeats}_{token}" + (f" {class_token}" if class_token else "")


def _caption_for(image: Path) -> Path | None:
    for ext in KNOWN_CAPTION_EXTENSIONS:
        candidate = image.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def _unique_stem(stem: str, taken: set[str]) -> str:
    clean = stem.strip() or "image"
    name, n = clean, 2
    while name.lower() in taken:  # case-insensitive: Windows and macOS filesystems fold case
        name, n = f"{clean}_{n}", n + 1
    taken.add(name.lower())
    return name


def copy_as_new(source: Path, target: Path) -> None:
    """Copy the bytes and the modification time, with a new file's permissions (not the source's)."""
    shutil.copyfile(source, target)
    stat = source.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    apply_umask(target)


def _import_image(source: Path, dest_stem: Path, max_side: int | None) -> tuple[Path, str | None]:
    """Write `source` as `dest_stem.<ext>`; returns (path, why it was re-encoded or None)."""
    with Image.open(source) as im:
        frames = int(getattr(im, "n_frames", 1))
        im.load()
        fmt = im.format
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        img = ImageOps.exif_transpose(im)
    reasons = []
    if frames > 1:
        reasons.append(f"animated, {frames} frames: first frame kept")
    if orientation not in (1, None):
        reasons.append("EXIF rotation applied")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        reasons.append(f"resized to {max_side} px")
    suffix = source.suffix.lower()
    if suffix in CONVERTIBLE or suffix == ".bmp":
        reasons.append(f"{suffix} to .png")
    if img.mode not in PLAIN_MODES:
        reasons.append(f"mode {img.mode} to 8-bit")
    if not reasons:
        target = dest_stem.with_suffix(".jpg" if suffix == ".jpeg" else suffix)
        copy_as_new(source, target)
        return target, None
    if fmt == "JPEG":  # JPEG has no alpha: flattened as the loader would
        target = dest_stem.with_suffix(".jpg")
        flatten_to_rgb(img).save(target, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        target = dest_stem.with_suffix(".png")
        to_8bit(img).save(target, "PNG")
    apply_umask(target)
    return target, ", ".join(reasons)


def init_dataset(src: str | Path, dest: str | Path, token: str, *, class_token: str | None = None,
                 repeats: int | Literal["auto"] = "auto", kind: Kind = "character", batch_size: int = 1,
                 max_side: int | None = None, target: tuple[int, int] | None = None) -> InitResult:
    """Copy and convert the photos under `src` into `dest/<repeats>_<token>[ <class>]/`."""
    source = Path(src).expanduser()
    if not source.is_dir():
        raise DatasetError(f"source {str(source)!r} is not a folder; pass the folder that holds your photos")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise DatasetError(f"--token {token!r} must be one word without spaces (it becomes the folder name "
                           "`<repeats>_<token>` and the trigger word in prompts)")
    files = list_images(source, extensions=IMAGE_EXTENSIONS | CONVERTIBLE)  # hidden files skipped
    if not files:
        raise DatasetError(f"no images under {source} (looked for {', '.join(sorted(IMAGE_EXTENSIONS | CONVERTIBLE))})")
    out_root = Path(dest).expanduser()
    check_output(out_root, [source], verb="dataset init", force=True, folder_output=True)
    if source.resolve() in out_root.resolve().parents:
        raise DatasetError(f"--dest {str(out_root)!r} is inside the source folder {str(source)!r}, so the "
                           "copies would mix with the photos; pick a folder outside it (the source is never "
                           "modified)")
    if repeats != "auto" and (not isinstance(repeats, int) or repeats < 1):
        raise DatasetError(f"--repeats {repeats!r} must be a whole number ≥ 1 or 'auto'")
    # Count readable images first: the folder name carries the repeats, which `auto` derives from it.
    readable: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
            readable.append(path)
        except Exception as exc:  # Pillow raises many types for broken files
            skipped.append((path, f"cannot be read ({type(exc).__name__}: {exc})"))
    if not readable:
        raise DatasetError(f"none of the {len(files)} image file(s) under {source} can be read; first: "
                           f"{skipped[0][0]} ({skipped[0][1]})")
    plan = plan_repeats(len(readable), kind=kind, batch_size=batch_size, target=target) if repeats == "auto" else None
    folder = out_root / folder_name(plan.repeats if plan else int(repeats), token, class_token)
    if folder.exists() and any(folder.iterdir()):
        raise DatasetError(f"{folder} already exists and is not empty; nothing was written. Choose another "
                           "--dest, or move that folder away first")
    folder.mkdir(parents=True, exist_ok=True)
    result = InitResult(folder=folder, skipped=skipped, plan=plan)
    taken: set[str] = set()
    for path in readable:
        stem = _unique_stem(path.stem, taken)
        try:
            written, why = _import_image(path, folder / stem, max_side)
        except Exception as exc:  # decoded by verify() but failed to load fully (truncated data)
            result.skipped.append((path, f"cannot be read ({type(exc).__name__}: {exc})"))
            taken.discard(stem.lower())
            continue
        if stem != path.stem:
            result.renamed.append((path, written))
        if why:
            result.converted.append((written, why))
        else:
            result.copied.append(written)
        caption = _caption_for(path)
        if caption is not None:
            copy_as_new(caption, written.with_suffix(".txt"))
            result.captions += 1
    return result
