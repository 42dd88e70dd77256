"""Shared fixtures: tiny SD 1.x models built once per test session (no network, fixed seeds)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and OpenMP threads that outnumber free cores
# (another process busy on a 2-core machine) slow tiny ops down by orders of magnitude.
torch.set_num_threads(1)


#: Files that run for minutes, longest first, those that start several training processes
#: (test_distributed, test_sharding, test_runs) between those that do not, so the two workers
#: rarely both run several processes at once. scripts/test.sh runs two pytest-xdist workers, a file
#: at a time each (`--dist loadfile --no-loadscope-reorder`), in collection order: starting with
#: these keeps one worker from ending alone on a long file while the other has finished.
SLOW_FIRST = (
    "tests/training/test_distributed.py",
    "tests/ui/test_browser_e2e.py",
    "tests/training/test_sharding.py",
    "tests/training/test_preservation.py",
    "tests/ui/test_runs.py",
    "tests/training/test_file_signals.py",
    "tests/ui/test_train_tab.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files of `SLOW_FIRST` first, in its order; the rest keep their order (a stable sort)."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x diffusers folder (`model_index.json` layout), seed 0. Treat as read-only."""
    from lorakiln.models.tiny import save_tiny_sd1_diffusers

    return save_tiny_sd1_diffusers(tmp_path_factory.mktemp("tiny_sd1") / "tiny-sd1", seed=0)


@pytest.fixture(scope="session")
def tiny_sd1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model (seed 0) as one LDM-layout `.safetensors` file. Treat as read-only."""
    from lorakiln.models.tiny import save_tiny_sd1_single_file

    return save_tiny_sd1_single_file(tmp_path_factory.mktemp("tiny_sd1_file") / "tiny-sd1.safetensors", seed=0)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def library_warnings() -> Iterator[list[logging.LogRecord]]:
    """WARNING+ records from the diffusers / peft / transformers loggers during the test.

    Handlers go on the library root loggers directly because diffusers does not propagate to
    the Python root logger.
    """
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL diffusers folder (`StableDiffusionXLPipeline` layout), seed 0. Treat as read-only."""
    from lorakiln.models.tiny_sdxl import save_tiny_sdxl_diffusers

    return save_tiny_sdxl_diffusers(tmp_path_factory.mktemp("tiny_sdxl") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny SDXL model (seed 0) as one SGM-layout `.safetensors` file. Treat as read-only."""
    from lorakiln.models.tiny_sdxl import save_tiny_sdxl_single_file

    path = tmp_path_factory.mktemp("tiny_sdxl_file") / "tiny-sdxl.safetensors"
    return save_tiny_sdxl_single_file(path, seed=0)
