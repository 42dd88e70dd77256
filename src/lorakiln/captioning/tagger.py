"""WD14 booru-style tags (SmilingWolf's taggers) run with ONNX Runtime.

The model is a folder (or hub repo) holding `model.onnx` and `selected_tags.csv`
(`tag_id,name,category,count`; category 9 = rating, 0 = general, 4 = character). Everything
about reading it follows sd-scripts' `finetune/tag_images_by_wd14_tagger.py`, which is what
kohya_ss's "WD14 Captioning" runs:

* preprocessing: RGB→BGR, pad to a square with white (255) centred, resize to the model's input
  size (area averaging when shrinking, as `cv2.INTER_AREA`; Lanczos when enlarging, kohya's
  `pil_resize`), float32 0–255 values, NHWC with the batch first; the size is read from the ONNX
  input shape rather than assumed to be 448;
* a general tag is kept when its probability is ≥ the general threshold (0.35), a character
  tag when ≥ the character threshold (0.85); the rating, if wanted, is the argmax of the rating
  tags and goes first (kohya `--use_rating_tags`);
* tags keep the model's order, general tags then character tags (or by confidence on request);
* `_` becomes a space except in kaomoji such as `^_^` (kohya's `--remove_underscore` keeps tags
  of 3 characters or fewer; SmilingWolf's demo lists the longer ones like `||_||`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lorakiln.captioning.files import CaptionSummary, OutputOptions, caption_folder, join_caption
from lorakiln.captioning.model_source import hub_error, resolve_caption_model
from lorakiln.errors import ConfigError, LorakilnError, ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

#: A WD14 v2 tagger with an ONNX export (the kohya_ss GUI offers it in its WD14 tab).
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-v1-4-convnextv2-tagger-v2"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
#: The two files the tagger needs (its repo also holds the Keras weights, which are not used).
TAGGER_DOWNLOAD = f"hf download {{repo}} {MODEL_FILE} {TAGS_FILE} --local-dir models/{{name}}"

#: Kaomoji whose underscores are part of the face (SmilingWolf's wd-tagger demo list); kohya's
#: `len(tag) > 3` rule alone would turn `||_||` or `(o)_(o)` into nonsense.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class TaggerOptions:
    """Tag selection and formatting.

    The thresholds are SmilingWolf's demo defaults: 0.35 for general tags and a stricter 0.85
    for character tags, since a wrong character name teaches the LoRA a wrong identity.
    """

    model: str = DEFAULT_TAGGER_MODEL
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    exclude_tags: tuple[str, ...] = ()
    replace_underscores: bool = True
    include_rating: bool = False
    sort_by_confidence: bool = False
    prefix: str = ""
    postfix: str = ""
    tag_separator: str = ", "
    batch_size: int = 1
    device: str = "auto"

    def validate(self) -> None:
        for flag, value in (("--threshold", self.general_threshold),
                            ("--character-threshold", self.character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{flag} is a probability between 0 and 1, got {value}")
        if not self.tag_separator:
            raise ConfigError("--tag-separator is empty, which would run the tags together; use \", \"")


@dataclass(frozen=True)
class Tag:
    """One row of `selected_tags.csv`; `index` is its output position in the model."""

    index: int
    name: str
    category: int


def display_name(name: str, replace_underscores: bool = True) -> str:
    """`long_hair` → `long hair`; kaomoji (`^_^`, `>_<`, `||_||`) stay as they are."""
    if not replace_underscores or name in KAOMOJI or len(name) <= 3:
        return name
    return name.replace("_", " ")


def read_selected_tags(path: Path) -> list[Tag]:
    """Parse `selected_tags.csv`; a wrong header or category is an error naming the line."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not rows or [c.strip() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        header = ",".join(rows[0]) if rows else "(empty file)"
        raise ModelLoadError(f"{path} does not start with the WD14 header tag_id,name,category,count "
                             f"(found {header!r}); use the selected_tags.csv that came with the model")
    tags = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            tags.append(Tag(index=len(tags), name=row[1], category=int(row[2])))
        except (IndexError, ValueError):
            raise ModelLoadError(f"{path} line {line} is not tag_id,name,category,count: {','.join(row)!r}") from None
    if not tags:
        raise ModelLoadError(f"{path} lists no tags; use the selected_tags.csv that came with the model")
    return tags


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """One RGB image → `size`×`size`×3 float32 BGR in 0–255, padded square on white (kohya)."""
    from PIL import Image as PILImage

    side = max(image.size)
    square = PILImage.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        # sd-scripts: cv2.INTER_AREA when shrinking, PIL Lanczos (`pil_resize`) when enlarging
        resample = PILImage.Resampling.BOX if side > size else PILImage.Resampling.LANCZOS
        square = square.resize((size, size), resample)
    array = np.asarray(square, dtype=np.float32)
    return np.ascontiguousarray(array[:, :, ::-1])  # RGB → BGR: the taggers were trained on cv2 images


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise LorakilnError("the WD14 tagger runs with ONNX Runtime, which is not installed: "
                            "pip install onnxruntime (or onnxruntime-gpu for an NVIDIA GPU), "
                            "or pip install 'lorakiln[tagger]'") from None
    return onnxruntime


def _providers(ort: Any, device: str) -> list[str]:
    available = set(ort.get_available_providers())
    device = (device or "auto").strip().lower()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(f"--device {device} was asked for but ONNX Runtime has no CUDA provider "
                              f"(it has {', '.join(sorted(available))}); pip install onnxruntime-gpu, "
                              "or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ConfigError(f"--device {device!r} is not one of auto, cpu, cuda")
    return [p for p in ("CUDAExecutionProvider", "ROCMExecutionProvider") if p in available] + ["CPUExecutionProvider"]


class WD14Tagger:
    """A loaded tagger: the ONNX session, its input geometry and the tag list."""

    def __init__(self, session: Any, tags: list[Tag], source: str) -> None:
        self.session, self.tags = session, tags
        spec = session.get_inputs()[0]
        self.input_name = spec.name
        shape = list(spec.shape)
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise ModelLoadError(f"{source}: {MODEL_FILE} takes input {shape}, not [batch, size, size, 3] "
                                 "(NHWC) like the WD14 taggers; is it a WD14 tagger?")
        self.size = shape[1]
        # Some exports fix the batch size (sd-scripts then uses the model's batch size instead).
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.source = source
        outputs = session.get_outputs()[0].shape
        if outputs and isinstance(outputs[-1], int):
            self._check_width(outputs[-1])

    def _check_width(self, width: int) -> None:
        if width != len(self.tags):
            raise ModelLoadError(f"{self.source}: {MODEL_FILE} gives {width} outputs per image but {TAGS_FILE} "
                                 f"lists {len(self.tags)} tags; the two files are from different models")

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Per-tag probabilities, one row per image."""
        batch = np.stack([preprocess(image, self.size) for image in images])
        step = self.fixed_batch or len(batch)
        outputs = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            real = len(chunk)
            if self.fixed_batch and real < step:  # pad a short last chunk, drop its rows after
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            outputs.append(self.session.run(None, {self.input_name: chunk})[0][:real])
        probs = np.concatenate(outputs).astype(np.float32)
        self._check_width(probs.shape[-1] if probs.ndim == 2 else -1)
        return probs

    def select(self, probs: np.ndarray, options: TaggerOptions) -> list[str]:
        """The tags (display names) for one row of probabilities, in caption order."""
        excluded = _excluded(options.exclude_tags)
        picked: list[tuple[float, int, str]] = []  # (probability, general first, name)
        for tag in self.tags:
            p = float(probs[tag.index])
            threshold = {GENERAL: options.general_threshold, CHARACTER: options.character_threshold}.get(tag.category)
            if threshold is None or p < threshold:
                continue
            name = display_name(tag.name, options.replace_underscores)
            if not _is_excluded(tag.name, name, excluded):
                picked.append((p, 0 if tag.category == GENERAL else 1, name))
        if options.sort_by_confidence:
            picked.sort(key=lambda item: -item[0])
        else:
            picked.sort(key=lambda item: item[1])  # stable: model order within general, then character
        names = [name for _, _, name in picked]
        ratings = [tag for tag in self.tags if tag.category == RATING]
        if options.include_rating and ratings:
            best = max(ratings, key=lambda tag: float(probs[tag.index]))
            name = display_name(best.name, options.replace_underscores)
            if not _is_excluded(best.name, name, excluded):
                names.insert(0, name)
        return names

    def caption(self, images: Sequence[Image.Image], options: TaggerOptions) -> list[str]:
        """Tag captions with prefix/postfix, one per image."""
        return [join_caption(options.prefix, options.tag_separator.join(self.select(row, options)),
                             options.postfix, options.tag_separator)
                for row in self.predict(images)]


def _excluded(tags: Sequence[str]) -> set[str]:
    """Excluded tags compared case-insensitively, written with `_` or with spaces."""
    out = set()
    for tag in tags:
        tag = tag.strip().lower()
        if tag:
            out |= {tag, tag.replace("_", " "), tag.replace(" ", "_")}
    return out


def _is_excluded(raw: str, shown: str, excluded: set[str]) -> bool:
    return raw.lower() in excluded or shown.lower() in excluded


def parse_tag_list(text: str | None) -> tuple[str, ...]:
    """`"1girl, long hair,,solo"` → ("1girl", "long hair", "solo"), for --exclude-tags."""
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def model_files(model: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) from a local folder, the Hugging Face cache, or the hub.

    `resolve_caption_model` decides first, so an uncached hub id on a machine that cannot
    download fails in seconds (`ModelUnavailable`) rather than after the hub client's retries."""
    files = f"{MODEL_FILE} and {TAGS_FILE}"
    source = resolve_caption_model(model, what="WD14 tagger", needs=(MODEL_FILE, TAGS_FILE), files=files,
                                   download=TAGGER_DOWNLOAD)
    folder = source.folder
    if folder is not None:
        missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(f"--model {model!r} has no {' or '.join(missing)}; a WD14 tagger folder holds "
                                 f"{MODEL_FILE} and {TAGS_FILE} (both are in the model's Hugging Face repo)")
        return folder / MODEL_FILE, folder / TAGS_FILE
    if source.cached:
        return source.cached[0], source.cached[1]
    repo_id = str(source.repo_id)
    from huggingface_hub import hf_hub_download

    try:
        paths = [Path(hf_hub_download(repo_id, name, cache_dir=str(source.cache_dir))) for name in (MODEL_FILE, TAGS_FILE)]
    except Exception as exc:  # network, auth, missing repo or file
        raise hub_error(repo_id, exc, what="WD14 tagger", files=files, download=TAGGER_DOWNLOAD) from exc
    return paths[0], paths[1]


def load_tagger(model: str = DEFAULT_TAGGER_MODEL, device: str = "auto") -> WD14Tagger:
    """Open a WD14 tagger once per run (ONNX Runtime is imported only here)."""
    ort = _import_onnxruntime()
    providers = _providers(ort, device)
    onnx_path, tags_path = model_files(model)
    tags = read_selected_tags(tags_path)
    try:
        session = ort.InferenceSession(str(onnx_path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile types
        raise ModelLoadError(f"{onnx_path} cannot be loaded by ONNX Runtime ({type(exc).__name__}: {exc}); "
                             "download the model again") from exc
    return WD14Tagger(session, tags, model)


def tag_images(root: str | os.PathLike[str], options: TaggerOptions | None = None,
               output: OutputOptions | None = None, *, tagger: WD14Tagger | None = None,
               log: Callable[[str], None] | None = None) -> CaptionSummary:
    """Tag the images under `root` with a WD14 tagger; see `OutputOptions` for where tags go."""
    options = options or TaggerOptions()
    output = output or OutputOptions()
    options.validate()

    def load() -> Callable[[list[Image.Image]], list[str]]:
        loaded = tagger
        if loaded is None:
            if log:
                log(f"loading WD14 tagger {options.model!r}")
            loaded = load_tagger(options.model, options.device)
        return lambda images: loaded.caption(images, options)

    return caption_folder(Path(root), output, load, batch_size=options.batch_size, log=log)
