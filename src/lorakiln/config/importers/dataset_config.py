"""sd-scripts dataset configs (`--dataset_config x.toml`) → lorakiln.

sd-scripts' documented workflow (its docs' config_README) keeps the data in a separate TOML:
`[general]` options for everything, `[[datasets]]` with the per-dataset ones (`resolution`,
`batch_size`, buckets) and `[[datasets.subsets]]`, one per image folder (`image_dir`,
`num_repeats`, `class_tokens`, `is_reg`, caption and augmentation options). A subset's value
wins over its dataset's, which wins over `[general]`; the dataset config wins over the same
option on the command line, and `--train_data_dir` / `--reg_data_dir` / `--in_json` are ignored
when it is given. The file is imported alone, or followed from `dataset_config = "x.toml"` /
`--dataset_config x.toml`, looked for next to the file that names it.

lorakiln has one training folder and one value per option, so the subsets are folded:

* subsets whose folders are named `<num_repeats>_<class_tokens>` in one parent folder are
  exactly a kohya folder: `data.train_data_dir` is the parent;
* a single other subset is an ImageFolder: its images with `data.repeats` and
  `data.instance_prompt` (class_tokens), and a note on caption files;
* anything else (several folders elsewhere) cannot be represented: the header says how to
  arrange them, and `data.train_data_dir` is left for the user to set.

Options whose values differ between datasets or subsets are named in the header (the first
one's value is used). `is_reg` subsets become `reg_data_dir`; `metadata_file` (fine-tuning)
subsets are listed as not imported.
"""

from __future__ import annotations

import json
import ntpath
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakiln.config.importers.draft import Draft, is_off
from lorakiln.errors import ConfigError

#: Dataset-level options (sd-scripts `config_util.py` BaseDatasetParams): the same for every
#: subset of a dataset; `batch_size` is the command line's `--train_batch_size`.
DATASET_LEVEL = {"batch_size": "train_batch_size", "resolution": "resolution", "enable_bucket": "enable_bucket",
                 "min_bucket_reso": "min_bucket_reso", "max_bucket_reso": "max_bucket_reso",
                 "bucket_reso_steps": "bucket_reso_steps", "bucket_no_upscale": "bucket_no_upscale",
                 "skip_image_resolution": "skip_image_resolution"}
#: Subset keys that say where the images are and what they are (read here, not passed on).
WHERE = ("image_dir", "num_repeats", "class_tokens", "is_reg", "metadata_file")
#: Command-line options sd-scripts ignores once a dataset config is given (its config_README).
IGNORED_WITH_CONFIG = ("train_data_dir", "reg_data_dir", "in_json")


@dataclass
class Subset:
    """One `[[datasets.subsets]]`: its folder, repeats, class tokens and where it was written."""

    image_dir: str | None
    num_repeats: int
    class_tokens: str | None
    is_reg: bool
    metadata_file: str | None
    where: str


@dataclass
class Folded:
    """The dataset config as flat sd-scripts options plus its subsets."""

    options: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    subsets: list[Subset] = field(default_factory=list)


def _show(where: str, key: str, value: Any) -> str:
    return f"{where} {key} = {json.dumps(value)}"


def _split(path: str) -> tuple[str, str]:
    """(parent, name) of a path written with / or \\ (a Windows path is read on any system)."""
    parent, name = ntpath.split(path.rstrip("/\\"))
    return parent, name


class _Folder:
    def __init__(self, raw: dict[str, Any], prefix: str, draft: Draft) -> None:
        self.raw, self.prefix, self.d = raw, prefix, draft
        self.out = Folded()
        self.seen: dict[str, list[tuple[Any, str]]] = {}

    def fold(self) -> Folded:
        general = self.raw.get("general") or {}
        datasets = self.raw.get("datasets") or []
        if not isinstance(general, dict) or not isinstance(datasets, list):
            raise ConfigError("not an sd-scripts dataset config: [general] must be a table and [[datasets]] "
                              "a list of tables")
        for key in self.raw:
            if key not in ("general", "datasets"):
                self.d.skip(f"{self.prefix}[{key}]", "not a part of an sd-scripts dataset config")
        for i, dataset in enumerate(datasets, start=1):
            tag = f"[[datasets]]{f' #{i}' if len(datasets) > 1 else ''}"
            subsets = dataset.get("subsets") or []
            for key in DATASET_LEVEL:
                found = self._pick(key, (dataset, tag), (general, "[general]"))
                if found:
                    self._record(DATASET_LEVEL[key], *found)
            for j, sub in enumerate(subsets, start=1):
                where = (f"{tag} " if len(datasets) > 1 else "") + "[[datasets.subsets]]" + (
                    f" #{j}" if len(subsets) > 1 else "")
                self._subset(sub, where, dataset, tag, general)
            if not subsets:
                self.d.skip(self.prefix + tag, "a dataset without [[datasets.subsets]] has no images")
        self._fold_conflicts()
        return self.out

    def _pick(self, key: str, *levels: tuple[dict[str, Any], str]) -> tuple[Any, str] | None:
        for table, where in levels:
            if key in table:
                return table[key], self.prefix + _show(where, key, table[key])
        return None

    def _record(self, option: str, value: Any, label: str) -> None:
        self.seen.setdefault(option, []).append((value, label))

    def _subset(self, sub: dict[str, Any], where: str, dataset: dict[str, Any], tag: str,
                general: dict[str, Any]) -> None:
        levels = ((sub, where), (dataset, tag), (general, "[general]"))
        repeats = self._pick("num_repeats", *levels)
        tokens = sub.get("class_tokens")
        self.out.subsets.append(Subset(
            image_dir=sub.get("image_dir"), num_repeats=int(repeats[0]) if repeats else 1,
            class_tokens=str(tokens) if tokens else None, is_reg=bool(sub.get("is_reg")),
            metadata_file=sub.get("metadata_file"), where=self.prefix + where))
        if sub.get("is_reg") or sub.get("metadata_file"):
            return  # class images take the training subsets' caption settings; fine-tuning ones are not read
        keys = {k for table in (general, dataset, sub) for k in table if k != "subsets"}
        for key in sorted(keys - set(DATASET_LEVEL) - set(WHERE)):
            found = self._pick(key, *levels)
            if found:
                self._record(key, *found)

    def _fold_conflicts(self) -> None:
        for option, found in self.seen.items():
            values = [json.dumps(v) for v, _ in found]
            if len(set(values)) > 1:
                key = "batch_size" if option == "train_batch_size" else option
                self.d.header.append(f"The dataset config sets {key} differently ({', '.join(dict.fromkeys(values))}); "
                                     f"lorakiln has one value for the whole run: the first, {values[0]}, is used.")
            self.out.options[option], self.out.labels[option] = found[0]


def fold_dataset_config(raw: dict[str, Any], draft: Draft, prefix: str = "") -> Folded:
    """Read a parsed dataset config into flat sd-scripts options and its subsets."""
    return _Folder(raw, prefix, draft).fold()


def _kohya_parent(subsets: list[Subset]) -> str | None:
    """The parent folder when every subset folder is `<num_repeats>_<class_tokens>` in it."""
    parents = set()
    for s in subsets:
        if not s.image_dir:
            return None
        parent, name = _split(s.image_dir)
        number, _, token = name.partition("_")
        if not (number.lstrip("+-").isdigit() and int(number) == s.num_repeats and token
                and (s.class_tokens is None or token == s.class_tokens)):
            return None
        parents.add(parent or ".")
    return parents.pop() if len(parents) == 1 and subsets else None


def _layout_hint(subsets: list[Subset], key: str) -> str:
    rows = "; ".join(f"{s.num_repeats}_{s.class_tokens or '<token>'}/ ← {s.image_dir}" for s in subsets)
    return f"make one folder with a subfolder per subset ({rows}) and set {key} to it"


def _folders(draft: Draft, subsets: list[Subset], args: dict[str, Any], labels: dict[str, str], *,
             reg: bool) -> None:
    """Point the training (or regularisation) folder option at the subsets, or say why not."""
    option = "reg_data_dir" if reg else "train_data_dir"
    key = "prior.class_data_dir" if reg else "data.train_data_dir"
    kind = "regularisation" if reg else "training"
    if not subsets:
        return
    parent = _kohya_parent(subsets)
    if parent is not None:
        args[option] = parent
        labels[option] = f"{subsets[0].where} image_dir = {json.dumps(subsets[0].image_dir)} (in a kohya folder)"
        use = "used as class images" if reg else "trained, with its caption files and the folder's token for images without one"
        draft.note(labels[option], f"every subfolder is named <num_repeats>_<class_tokens>, so lorakiln reads {parent} "
                   f"as a kohya folder: each <repeats>_<token> subfolder in it is {use}")
        return
    if len(subsets) > 1:
        draft.header.append(f"The dataset config has {len(subsets)} {kind} subsets in separate folders; lorakiln "
                            f"reads one folder of kohya subfolders: {_layout_hint(subsets, key)}.")
        return
    s = subsets[0]
    args[option] = s.image_dir
    labels[option] = f"{s.where} image_dir = {json.dumps(s.image_dir)}"
    if reg:
        if s.class_tokens:
            draft.put("prior.class_prompt", s.class_tokens, f"{s.where} class_tokens = {json.dumps(s.class_tokens)}")
        return
    if s.num_repeats != 1:
        draft.put("data.repeats", s.num_repeats, f"{s.where} num_repeats = {s.num_repeats}")
    if s.class_tokens:
        draft.put("data.instance_prompt", s.class_tokens, f"{s.where} class_tokens = {json.dumps(s.class_tokens)} "
                  "(the caption of images without a caption file)")
    draft.note(labels[option], "lorakiln reads a folder of loose images as an ImageFolder: every image is captioned "
               "with data.instance_prompt and caption files are not read. If the folder has caption files, "
               f"{_layout_hint([s], key)} (a kohya folder: captions read, the token for the rest)")


def merge_dataset_config(raw: dict[str, Any], args: dict[str, Any], labels: dict[str, str], draft: Draft,
                         prefix: str = "") -> None:
    """Merge a parsed dataset config into sd-scripts `args` (it wins over them, as in sd-scripts),
    set the folders from its subsets and account for the options sd-scripts then ignores."""
    folded = fold_dataset_config(raw, draft, prefix)
    for name in IGNORED_WITH_CONFIG:
        value = args.pop(name, None)
        if value is not None and not is_off(value):
            draft.note(f"{name} = {json.dumps(value)}", "sd-scripts ignores it when a dataset config is given")
    args.update(folded.options)
    labels.update(folded.labels)
    for s in folded.subsets:
        if s.metadata_file:
            draft.skip(f"{s.where} metadata_file = {json.dumps(s.metadata_file)}", "fine-tuning metadata JSON is "
                       "not read (kohya folders or metadata.jsonl are): caption the images with .txt files")
        elif not s.image_dir:
            draft.skip(s.where, "a DreamBooth subset without image_dir has no images")
    usable = [s for s in folded.subsets if s.image_dir and not s.metadata_file]
    _folders(draft, [s for s in usable if not s.is_reg], args, labels, reg=False)
    _folders(draft, [s for s in usable if s.is_reg], args, labels, reg=True)
    if not any(not s.is_reg for s in usable):
        draft.header.append("The dataset config lists no training images (only regularisation or fine-tuning "
                            "subsets): set data.train_data_dir.")


def load_referenced(value: str, search: list[Path]) -> tuple[dict[str, Any] | None, str]:
    """The dataset config a source names, looked for next to it (then the output folder and the
    current one), and where it was found or where it was looked for."""
    tried = []
    for folder in search:
        path = (folder / Path(value).expanduser()) if not Path(value).expanduser().is_absolute() else Path(value)
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8-sig")
                return (json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)), str(path)
            except (ValueError, UnicodeDecodeError) as err:
                raise ConfigError(f"dataset config {path} is not valid TOML/JSON ({err})") from None
        tried.append(str(path))
        if Path(value).is_absolute():
            break
    return None, ", ".join(dict.fromkeys(tried))


def follow_reference(args: dict[str, Any], labels: dict[str, str], draft: Draft, shown: str,
                     search: list[Path]) -> None:
    """`dataset_config = "x.toml"` in a config or command: read x.toml into `args`."""
    value = str(args.pop("dataset_config"))
    raw, where = load_referenced(value, search)
    if raw is None:
        draft.skip(shown, f"the dataset config was not found (looked for {where}); import it with `lorakiln "
                   "config import` next to this one, or set data.train_data_dir and the data options by hand")
        draft.header.append(f"The dataset config {value} was not found, so its resolution, batch size, repeats "
                            "and folders are not in this file.")
        return
    draft.note(shown, f"read from {where}; its options are listed with the file's name")
    merge_dataset_config(raw, args, labels, draft, prefix=f"{Path(value).name}: ")
