"""Training data: kohya folders, captions, buckets, image tensors, latent cache, batching.

The scanner, captions and buckets import no torch, so `lorakiln dataset` can lint a folder
instantly; the tensor side (`images.load_pixels`, `latent_cache`, `loader`) is loaded lazily
on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from lorakiln.data.buckets import Bucket, BucketManager, bucket_histogram, bucket_info_metadata
from lorakiln.data.captions import process_caption
from lorakiln.data.dataset import Dataset, ImageItem, Subset
from lorakiln.data.kohya import scan_kohya_dataset

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
    "bucket_info_metadata", "process_caption", "scan_kohya_dataset", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lorakiln.data' has no attribute {name!r}")
