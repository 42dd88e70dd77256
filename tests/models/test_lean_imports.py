"""Loading models must not import bitsandbytes (seconds of start-up: it looks for hub kernels at
import), and the 8-bit optimizers must still get it. Fresh interpreters, since this test session
may have imported it already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LIBRARY = """
from lorakiln.models.loading import load_base_model
load_base_model("tiny:sd1")
result = {"after_load": sys.modules.get("bitsandbytes") is not None, "quantizers": "diffusers.quantizers" in sys.modules}
"""
# What `lorakiln.cli.main` does first, then what any verb may import (preflight's family check,
# the pipelines), then an 8-bit optimizer.
_CLI = """
from lorakiln.models.lean_imports import hide_bitsandbytes
hide_bitsandbytes()
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
import peft
result = {"after_load": sys.modules.get("bitsandbytes") is not None, "quantizers": "diffusers.quantizers" in sys.modules}
import torch
from lorakiln.training.optimizers import build_optimizer
try:
    build_optimizer("AdamW8bit", [{"params": [torch.nn.Parameter(torch.zeros(4))]}], lr=1e-3)
except Exception as exc:  # no 8-bit kernel for this device is fine: the package was imported to ask
    result["optimizer_error"] = str(exc)[:200]
result["after_optimizer"] = sys.modules.get("bitsandbytes") is not None
"""


@pytest.mark.parametrize("body", [_LIBRARY, _CLI], ids=["load_base_model", "cli"])
def test_model_loading_leaves_bitsandbytes_alone(body: str) -> None:
    code = f"import json, sys\n{body}\nprint(json.dumps(result))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["quantizers"], "diffusers no longer imports its quantizers: this test checks nothing"
    assert not result["after_load"], "loading a model imported bitsandbytes"
    if "after_optimizer" in result:
        assert result["after_optimizer"], result  # the 8-bit optimizers import it when asked
