"""`dataset_name`: a dataset on the Hugging Face Hub, materialised as a local ImageFolder.

The diffusers advanced SDXL recipe's Option 1 ("--dataset_name=LinoyTsaban/3d_icon --caption_column=prompt") loads the
dataset with `datasets.load_dataset`. `datasets` is deliberately *not* a lorakiln dependency
(it is large and needs the network), so it is imported only here, and its absence is a clear
error with both fixes. The rows are written once into `dest` as PNG files + `metadata.jsonl`
and then scanned like any local ImageFolder, so every check, the latent cache (keyed by file
content) and a later offline run all work on plain files. A hub out of reach is said in seconds
(`models.hub_access`), before `datasets` would retry it for minutes. A finished download is marked
with `.hub_source.json`, written last; a folder without it is re-materialised.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from lorakiln.atomic import write_bytes_atomic, write_text_atomic
from lorakiln.data.dataset import Dataset
from lorakiln.data.imagefolder import DEFAULT_CAPTION_COLUMN, scan_imagefolder
from lorakiln.data.scan_common import nearest
from lorakiln.errors import DatasetError

MARKER = ".hub_source.json"


def load_hub_dataset(dataset_name: str, dest: str | os.PathLike[str], *,
                     caption_column: str | None = DEFAULT_CAPTION_COLUMN, image_column: str | None = None,
                     split: str = "train", revision: str | None = None, instance_prompt: str | None = None,
                     repeats: int = 1) -> Dataset:
    """Download `dataset_name` (once) into `dest` and scan it as an ImageFolder.

    `image_column=None` takes the first column, as the diffusers script does.
    """
    dest = Path(dest).expanduser()
    source = {"dataset_name": dataset_name, "split": split, "revision": revision}
    marker = dest / MARKER
    done = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if not done or {k: done.get(k) for k in source} != source:
        _materialise(dataset_name, dest, source, caption_column, image_column)
    return scan_imagefolder(dest, caption_column=caption_column, instance_prompt=instance_prompt, repeats=repeats)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "dataset_name loads a dataset from the Hugging Face Hub, which needs the `datasets` package and "
            "network access: run `pip install datasets`, or download the dataset yourself and set "
            "train_data_dir to a local folder with the images and a metadata.jsonl") from None
    return datasets


def _refuse_unreachable_hub(name: str) -> None:
    """Fail in seconds, not after minutes of `datasets` retries, when the hub cannot be reached
    (with ``HF_HUB_OFFLINE`` set, `datasets` reads only its own cache and fails fast by itself)."""
    from lorakiln.models.hub_access import hub_offline, hub_unreachable, offline_advice

    reason = None if hub_offline() else hub_unreachable()
    if reason:
        raise DatasetError(f"data.dataset_name {name!r}: the Hugging Face Hub cannot be reached ({reason}), so the "
                           "dataset cannot be downloaded; download it on a machine with internet and set "
                           "data.train_data_dir to a local folder with the images and a metadata.jsonl. "
                           + offline_advice())


def _materialise(name: str, dest: Path, source: dict[str, Any], caption_column: str | None,
                 image_column: str | None) -> None:
    _refuse_unreachable_hub(name)
    datasets = _import_datasets()
    try:
        table = datasets.load_dataset(name, split=source["split"], revision=source["revision"])
    except Exception as exc:  # network, unknown name, private repo...: all user-fixable
        raise DatasetError(f"could not load dataset_name {name!r} from the Hub ({type(exc).__name__}: {exc}); "
                           "check the name, your network and `huggingface-cli login` for private data") from exc
    columns = list(table.column_names)
    image_column = image_column or columns[0]
    for option, column in (("image_column", image_column), ("caption_column", caption_column)):
        if column is not None and column not in columns:
            hint = nearest(column, columns)
            raise DatasetError(f"dataset {name!r} has no column {column!r} ({option}); its columns are "
                               f"{', '.join(map(repr, columns))}" + (f"; did you mean {hint!r}?" if hint else ""))
    lines = []
    for index, row in enumerate(table):
        image = row[image_column]
        if not hasattr(image, "save"):
            raise DatasetError(f"dataset {name!r} column {image_column!r} holds {type(image).__name__}, not "
                               "images; set image_column to the image column")
        file_name = f"{index:05d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_bytes_atomic(dest / file_name, buffer.getvalue())
        entry = {"file_name": file_name}
        if caption_column is not None:
            entry[caption_column] = row[caption_column]
        lines.append(json.dumps(entry, ensure_ascii=False))
    write_text_atomic(dest / "metadata.jsonl", "\n".join(lines) + "\n")
    write_text_atomic(dest / MARKER, json.dumps({**source, "rows": len(lines)}, indent=1))
