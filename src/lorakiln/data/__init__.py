"""Training data: kohya folders, ImageFolder (metadata.jsonl/csv) folders, class images for
prior preservation, captions, buckets, image tensors, latent cache, batching.

The scanners, captions and buckets import no torch, so `lorakiln dataset` can lint a folder
instantly; the tensor side (`images.load_pixels`, `latent_cache`, `loader`) is loaded lazily
on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from lorakiln.data.buckets import Bucket, BucketManager, bucket_histogram, bucket_info_metadata
from lorakiln.data.captions import process_caption
from lorakiln.data.class_images import (
    count_class_images,
    missing_class_images,
    read_class_manifest,
    scan_class_images,
    write_class_images,
)
from lorakiln.data.dataset import Dataset, ImageItem, Subset
from lorakiln.data.hub import load_hub_dataset
from lorakiln.data.imagefolder import scan_imagefolder
from lorakiln.data.kohya import scan_kohya_dataset
from lorakiln.data.layout import detect_layout, scan_dataset

_LAZY = {
    "LatentCache": "lorakiln.data.latent_cache",
    "file_sha256": "lorakiln.data.latent_cache",
    "vae_fingerprint": "lorakiln.data.latent_cache",
    "TrainData": "lorakiln.data.loader",
    "Batch": "lorakiln.data.loader",
    "CaptionOptions": "lorakiln.data.loader",
    "AugmentOptions": "lorakiln.data.loader",
    "StepsBreakdown": "lorakiln.data.steps",
    "CropPlan": "lorakiln.data.images",
    "plan_crop": "lorakiln.data.images",
    "load_pixels": "lorakiln.data.images",
}

__all__ = [
    "Bucket", "BucketManager", "Dataset", "ImageItem", "Subset", "bucket_histogram",
    "bucket_info_metadata", "count_class_images", "detect_layout", "load_hub_dataset", "missing_class_images",
    "process_caption", "read_class_manifest", "scan_class_images", "scan_dataset", "scan_imagefolder",
    "scan_kohya_dataset", "write_class_images", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lorakiln.data' has no attribute {name!r}")
