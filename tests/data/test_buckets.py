"""Bucket semantics (kohya BucketManager): aspect choice, multiples of steps, area, no-upscale."""

from __future__ import annotations

import pytest

from lorakiln.data.buckets import (
    BucketManager,
    bucket_histogram,
    bucket_info_metadata,
    format_histogram,
    make_bucket_resolutions,
)


def test_predefined_buckets_are_multiples_within_bounds_and_area() -> None:
    buckets = make_bucket_resolutions((512, 512), min_size=256, max_size=1024, steps=64)
    assert (512, 512) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= 512 * 512
    assert all((h, w) in buckets for w, h in buckets)  # symmetric
    assert buckets == sorted(buckets)


def test_sdxl_resolution_includes_common_buckets() -> None:
    buckets = make_bucket_resolutions((1024, 1024), min_size=256, max_size=2048)
    for expected in [(1024, 1024), (832, 1216), (1216, 832), (896, 1152)]:
        assert expected in buckets


@pytest.mark.parametrize(("size", "expected"), [
    ((1000, 1000), (512, 512)),
    ((600, 900), (384, 640)),  # 2:3 portrait → closest ratio 0.6
    ((900, 600), (640, 384)),
    ((512, 512), (512, 512)),
    ((448, 576), (448, 576)),  # exact bucket size wins
])
def test_assign_closest_aspect(size: tuple[int, int], expected: tuple[int, int]) -> None:
    manager = BucketManager((512, 512))
    bucket = manager.assign_bucket(*size)
    assert bucket == expected
    best = min(abs(w / h - size[0] / size[1]) for w, h in manager.predefined)
    assert abs(bucket[0] / bucket[1] - size[0] / size[1]) == pytest.approx(best)


def test_small_images_are_upscaled_to_a_normal_bucket() -> None:
    assert BucketManager((512, 512)).assign_bucket(100, 150) == (384, 640)


def test_bucket_disabled_uses_resolution() -> None:
    manager = BucketManager((512, 768), enable_bucket=False)
    assert manager.assign_bucket(4000, 1000) == (512, 768)
    assert manager.predefined == [(512, 768)]


def test_no_upscale_never_enlarges() -> None:
    manager = BucketManager((512, 512), no_upscale=True)
    assert manager.assign_bucket(300, 200) == (256, 192)  # rounded down to steps
    for size in [(300, 200), (1000, 1000), (4000, 3000), (640, 640), (130, 700)]:
        w, h = manager.assign_bucket(*size)
        assert w % 64 == 0 and h % 64 == 0
        assert w <= size[0] and h <= size[1]
        assert w * h <= 512 * 512


def test_no_upscale_large_image_keeps_aspect_and_area() -> None:
    manager = BucketManager((1024, 1024), no_upscale=True)
    w, h = manager.assign_bucket(4000, 3000)
    assert (w, h) == (1024, 768)


def test_no_upscale_caps_long_side_and_tiny_images() -> None:
    manager = BucketManager((512, 512), no_upscale=True, max_bucket_reso=1024)
    w, h = manager.assign_bucket(8000, 500)
    assert w <= 1024
    assert manager.assign_bucket(30, 40) == (64, 64)  # never a 0-px bucket


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        BucketManager(min_bucket_reso=1024, max_bucket_reso=256)
    with pytest.raises(ValueError):
        BucketManager().assign_bucket(0, 10)


def test_histogram_and_metadata() -> None:
    hist = bucket_histogram([(512, 512), (384, 640), (512, 512)])
    assert hist == {(384, 640): 1, (512, 512): 2}
    info = bucket_info_metadata(hist, 0.01)
    assert info == {"buckets": {"0": {"resolution": [384, 640], "count": 1},
                                "1": {"resolution": [512, 512], "count": 2}},
                    "mean_img_ar_error": 0.01}
    assert "512x512: 2" in format_histogram(hist)
