"""`--verbose`'s lines (training/trace.py): one write per line, naming the process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakiln.training.trace import batch_line, prefixed


def test_each_line_names_its_process(capsys: pytest.CaptureFixture[str]) -> None:
    prefixed(1)("latents: 4 cached\nstep 1")
    assert capsys.readouterr().out == "[process 1] latents: 4 cached\n[process 1] step 1\n"


def test_a_batch_line_gives_step_bucket_and_instance_images_only() -> None:
    batch = SimpleNamespace(bucket=(128, 64), paths=[Path("a.png"), Path("class.png")], num_instance=1)
    assert batch_line(batch, 2, 0, 1, empty=False) == "step 3 (epoch 1, micro-batch 2): bucket 128x64: a.png"
    assert batch_line(batch, 2, 0, 0, empty=True).endswith("bucket 128x64: none (a zero-weighted stand-in)")
