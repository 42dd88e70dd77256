"""Readable views of a LoRA's metadata: kohya ``ss_*`` training settings, datasets, base model,
``modelspec.*``, likely trigger words, and the ``sshs_model_hash`` check against the tensor data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lorakiln.lora_tools.files.header import SafetensorsHeader
from lorakiln.safetensors_check import tensor_data_sha256

# --------------------------------------------------------------------------------------------
# metadata (kohya ss_*, sd-scripts train_network.py)
# --------------------------------------------------------------------------------------------


def decode_value(value: str) -> Any:
    """JSON-valued metadata decoded, as A1111 does for values starting with ``{``
    (``read_metadata_from_safetensors``)."""
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _present(md: dict[str, str], key: str) -> str | None:
    value = md.get(key)
    return None if value in (None, "", "None", "null") else value


def format_time(value: str | None) -> str | None:
    """kohya writes unix seconds; show a UTC date (the value is kept if it is not a number)."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return value


def _duration(start: str | None, end: str | None) -> str | None:
    try:
        seconds = int(float(end) - float(start))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if seconds < 0:
        return None
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def training_summary(md: dict[str, str]) -> dict[str, str]:
    """The training settings as readable label → value lines (absent/"None" values skipped)."""
    p = lambda key: _present(md, key)  # noqa: E731
    out: dict[str, str] = {}

    def put(label: str, value: str | None) -> None:
        if value:
            out[label] = value

    put("output name", p("ss_output_name"))
    if p("ss_network_module") or p("ss_network_dim"):
        parts = [p("ss_network_module") or "?"]
        if p("ss_network_dim"):
            parts.append(f"dim {p('ss_network_dim')}")
        if p("ss_network_alpha"):
            parts.append(f"alpha {p('ss_network_alpha')}")
        args = decode_value(md.get("ss_network_args", "")) if p("ss_network_args") else None
        if args:
            parts.append(
                "args " + ", ".join(f"{k}={v}" for k, v in args.items())
                if isinstance(args, dict)
                else f"args {args}"
            )
        put("network", ", ".join(parts))
    put("learning rate", p("ss_learning_rate"))
    put("U-Net lr", p("ss_unet_lr"))
    put("text encoder lr", p("ss_text_encoder_lr"))
    put("optimizer", p("ss_optimizer"))
    sched = p("ss_lr_scheduler")
    if sched and p("ss_lr_warmup_steps") not in (None, "0"):
        sched += f" (warmup {p('ss_lr_warmup_steps')} steps)"
    put("lr scheduler", sched)
    steps, max_steps = p("ss_steps"), p("ss_max_train_steps")
    put("steps", f"{steps} of {max_steps}" if steps and max_steps else steps or max_steps)
    epoch, epochs = p("ss_epoch"), p("ss_num_epochs")
    put("epochs", f"{epoch} of {epochs}" if epoch and epochs else epoch or epochs)
    batch = p("ss_batch_size_per_device")
    if batch:
        accum = p("ss_gradient_accumulation_steps")
        batch += f" (× {accum} accumulation = {p('ss_total_batch_size')})" if accum not in (None, "1") else ""
    put("batch size", batch)
    images = p("ss_num_train_images")
    if images:
        images += " per epoch (images × repeats)"
        if p("ss_num_reg_images") not in (None, "0"):
            images += f", {p('ss_num_reg_images')} regularisation"
    put("training images", images)
    res = p("ss_resolution")
    if res and p("ss_enable_bucket") == "True":
        res += ", bucketed"
    put("resolution", res)
    for label, key in (
        ("mixed precision", "ss_mixed_precision"),
        ("seed", "ss_seed"),
        ("clip skip", "ss_clip_skip"),
        ("comment", "ss_training_comment"),
    ):
        put(label, p(key))
    # Options shown only when switched on: their off values ("0", "False") are kohya's defaults.
    for label, key in (
        ("noise offset", "ss_noise_offset"),
        ("min SNR gamma", "ss_min_snr_gamma"),
        ("network dropout", "ss_network_dropout"),
        ("caption dropout", "ss_caption_dropout_rate"),
        ("tag dropout", "ss_caption_tag_dropout_rate"),
        ("shuffle caption", "ss_shuffle_caption"),
        ("keep tokens", "ss_keep_tokens"),
        ("flip aug", "ss_flip_aug"),
        ("gradient checkpointing", "ss_gradient_checkpointing"),
    ):
        value = p(key)
        if value not in (None, "0", "0.0", "False"):
            put(label, value)
    start, end = p("ss_training_started_at"), p("ss_training_finished_at")
    put("started", format_time(start))
    finished = format_time(end)
    if finished and (took := _duration(start, end)):
        finished += f" ({took})"
    put("finished", finished)
    put("session id", p("ss_session_id"))
    buckets = decode_value(md.get("ss_bucket_info", "")) if p("ss_bucket_info") else None
    if isinstance(buckets, dict) and isinstance(buckets.get("buckets"), dict):
        sizes = sorted(buckets["buckets"].values(), key=lambda b: -int(b.get("count", 0)))
        shown = ", ".join(
            f"{b['resolution'][0]}×{b['resolution'][1]} ({b.get('count', '?')})"
            for b in sizes[:6]
            if isinstance(b.get("resolution"), list)
        )
        put("buckets", f"{len(sizes)}: {shown}" + (", …" if len(sizes) > 6 else ""))
    return out


def dataset_dirs(md: dict[str, str]) -> list[dict[str, Any]]:
    """``[{"folder", "repeats", "images"}]`` from ``ss_dataset_dirs`` or kohya's ``ss_datasets``."""
    out: list[dict[str, Any]] = []
    dirs = decode_value(md.get("ss_dataset_dirs", "")) if _present(md, "ss_dataset_dirs") else None
    if isinstance(dirs, dict):
        for name, info in dirs.items():
            info = info if isinstance(info, dict) else {}
            out.append({"folder": name, "repeats": info.get("n_repeats"), "images": info.get("img_count")})
    datasets = decode_value(md.get("ss_datasets", "")) if _present(md, "ss_datasets") else None
    if not out and isinstance(datasets, list):
        for dataset in datasets:
            for subset in (dataset or {}).get("subsets", []) if isinstance(dataset, dict) else []:
                if isinstance(subset, dict):
                    folder = str(subset.get("image_dir") or subset.get("class_tokens") or "?")
                    out.append(
                        {
                            "folder": folder,
                            "repeats": subset.get("num_repeats"),
                            "images": subset.get("img_count"),
                        }
                    )
    return out


_MODELSPEC_ORDER = ("title", "architecture", "implementation", "date", "resolution", "prediction_type")


def modelspec_summary(md: dict[str, str]) -> dict[str, str]:
    """``modelspec.*`` keys, the usual ones first; a thumbnail (base64 image) is only sized."""
    keys = sorted(
        (k for k in md if k.startswith("modelspec.")),
        key=lambda k: (_MODELSPEC_ORDER.index(k[10:]) if k[10:] in _MODELSPEC_ORDER else 99, k),
    )
    return {k: md[k] if k != "modelspec.thumbnail" else f"(image, {len(md[k])} characters)" for k in keys}


def base_model_summary(md: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for label, key in (
        ("name", "ss_sd_model_name"),
        ("sha256", "ss_new_sd_model_hash"),
        ("legacy hash", "ss_sd_model_hash"),
        ("VAE", "ss_vae_name"),
        ("version", "ss_base_model_version"),
        ("v2", "ss_v2"),
    ):
        if (value := _present(md, key)) is not None:
            out[label] = value
    return out


def _tag_frequencies(md: dict[str, str]) -> dict[str, dict[str, int]]:
    freq = decode_value(md.get("ss_tag_frequency", "")) if _present(md, "ss_tag_frequency") else None
    out: dict[str, dict[str, int]] = dict(freq) if isinstance(freq, dict) else {}
    datasets = decode_value(md.get("ss_datasets", "")) if _present(md, "ss_datasets") else None
    if isinstance(datasets, list):  # kohya's dataset-config form keeps tag_frequency per dataset
        for dataset in datasets:
            if isinstance(dataset, dict) and isinstance(dataset.get("tag_frequency"), dict):
                for folder, tags in dataset["tag_frequency"].items():
                    out.setdefault(folder, tags)
    return {f: {str(t): int(n) for t, n in tags.items()} for f, tags in out.items() if isinstance(tags, dict)}


def folder_token(folder: str) -> str | None:
    """The trigger token of a kohya folder ``<repeats>_<token>[ <class>]`` (last path part)."""
    name = folder.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    m = re.fullmatch(r"\d+_(\S+)(?: .*)?", name)
    return m[1] if m else None


@dataclass
class TriggerWords:
    """Tags found in most images of one training folder (kohya ``ss_tag_frequency``)."""

    folder: str
    images: int
    #: (tag, images with it), folder token first, then by frequency.
    tags: list[tuple[str, int]]

    def describe(self) -> list[str]:
        return [f"{tag} ({n}/{self.images} images)" for tag, n in self.tags]


def trigger_words(md: dict[str, str], *, share: float = 0.5, limit: int = 8) -> list[TriggerWords]:
    """Likely trigger words: per folder, the tags in at least `share` of its images; the folder's
    token (kohya ``<repeats>_<token>``) and common tags containing it come first, and the token
    itself is listed even when rarer. A1111 shows the same ``ss_tag_frequency`` counts.

    The image count comes from ``ss_dataset_dirs``/``ss_datasets``; without it, the most frequent
    tag's count stands in (every image has at least that many tags).
    """
    counts = {d["folder"]: d["images"] for d in dataset_dirs(md) if isinstance(d.get("images"), int)}
    out: list[TriggerWords] = []
    for folder, tags in _tag_frequencies(md).items():
        if tags:
            images = counts.get(folder) or max(tags.values())
            chosen = _folder_triggers(tags, folder_token(folder), share * images)[:limit]
            if chosen:
                out.append(TriggerWords(folder, images, [(t, tags[t]) for t in chosen]))
    return out


def _folder_triggers(tags: dict[str, int], token: str | None, min_count: float) -> list[str]:
    word = re.compile(rf"(?<!\w){re.escape(token)}(?!\w)") if token else None
    first = [t for t in tags if t == token or (word and word.search(t) and tags[t] >= min_count)]
    first.sort(key=lambda t: (t != token, -tags[t], t))
    rest = sorted((t for t in tags if t not in first and tags[t] >= min_count), key=lambda t: (-tags[t], t))
    return first + rest


# --------------------------------------------------------------------------------------------
# hashes (kohya/A1111 sshs_*, sd-scripts train_util.precalculate_safetensors_hashes)
# --------------------------------------------------------------------------------------------


def file_hashes(header: SafetensorsHeader, verify: bool, notes: list[str]) -> dict[str, Any]:
    """The stored kohya/A1111 hashes; with ``verify``, recomputed and any mismatch noted (reads the tensors)."""
    md = header.metadata
    out: dict[str, Any] = {k: md[k] for k in ("sshs_model_hash", "sshs_legacy_hash") if k in md}
    if verify:
        actual = tensor_data_sha256(header.path)
        out["tensor_data_sha256"] = actual
        if "sshs_model_hash" in md:
            out["sshs_model_hash_matches"] = md["sshs_model_hash"] == actual
            if md["sshs_model_hash"] != actual:
                notes.append(
                    "sshs_model_hash does not match the tensor data: the tensors were changed after "
                    "the hash was written (A1111 shows the stale hash)"
                )
    return out
