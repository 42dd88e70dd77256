"""kohya folder names that train wrongly: `10_` (no trigger word) and `-3_zwx` / `0_zwx` (repeats)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lorakiln.data import scan_dataset
from lorakiln.data.kohya import parse_folder_name
from lorakiln.errors import DatasetError


@pytest.mark.parametrize(("name", "fix"), [("-3_zwx", "`3_zwx`"), ("0_zwx toy", "`1_zwx toy`"),
                                           ("-0_zwx", "`1_zwx`")])
def test_non_positive_repeats_are_named(name: str, fix: str) -> None:
    with pytest.raises(ValueError, match="positive whole number") as info:
        parse_folder_name(name)
    assert fix in str(info.value)


def test_plus_sign_is_accepted_as_kohya_does() -> None:
    assert parse_folder_name("+3_zwx") == (3, "zwx", None)  # kohya: int("+3") == 3


def test_negative_repeats_folder_is_recognised_as_kohya(tmp_path: Path, make_image) -> None:
    """The layout detector used to see `-3_zwx` as a stray folder and hint `10_-3_zwx`."""
    make_image(tmp_path / "-3_zwx" / "a.png", caption="zwx")
    with pytest.raises(DatasetError) as info:
        scan_dataset(tmp_path)
    message = str(info.value)
    assert "has repeats -3" in message and "`3_zwx`" in message
    assert "10_-3_zwx" not in message


def test_folder_without_trigger_word_warns(tmp_path: Path, make_image, caplog) -> None:
    make_image(tmp_path / "10_" / "a.png", caption="a photo of a dog")
    with caplog.at_level(logging.WARNING, logger="lorakiln"):
        dataset = scan_dataset(tmp_path)
    codes = dict(dataset.scan_warnings)
    assert "no-trigger-word" in codes
    assert "10_" in codes["no-trigger-word"] and "empty prompt" in codes["no-trigger-word"]
    assert "`10_zwx`" in codes["no-trigger-word"]
    assert any("no trigger word" in r.getMessage() for r in caplog.records)


def test_folder_without_trigger_word_and_caption_is_refused(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "10_" / "a.png")  # no caption: it would train on an empty prompt
    with pytest.raises(DatasetError, match="has no .txt caption"):
        scan_dataset(tmp_path)


def test_named_folder_has_no_such_warning(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "10_zwx" / "a.png", caption="zwx")
    assert "no-trigger-word" not in dict(scan_dataset(tmp_path).scan_warnings)
