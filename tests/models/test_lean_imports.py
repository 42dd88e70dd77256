"""A `lorakiln` command that loads a model must not import bitsandbytes (seconds of start-up: it
looks for hub kernels at import), and the 8-bit optimizers must still get it. Fresh
interpreters, since this test session may have imported it already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys
from lorakiln.cli import main
code = main(["generate", "--model", "tiny:sd1", "--prompt", "a toy", "--steps", "1", "--size", "64x64",
             "--sampler", "Euler", "--output-dir", {out!r}])
result = {{"code": code, "after_load": sys.modules.get("bitsandbytes") is not None,
          "quantizers": "diffusers.quantizers" in sys.modules, "peft": "peft" in sys.modules}}
import torch
from lorakiln.training.optimizers import build_optimizer
try:
    build_optimizer("AdamW8bit", [{{"params": [torch.nn.Parameter(torch.zeros(4))]}}], lr=1e-3)
except Exception as exc:  # no 8-bit kernel for this device is fine: the package was imported to ask
    result["optimizer_error"] = str(exc)[:200]
result["after_optimizer"] = sys.modules.get("bitsandbytes") is not None
print(json.dumps(result))
"""


def test_a_command_loading_a_model_leaves_bitsandbytes_alone(tmp_path: Path) -> None:
    code = _CHILD.format(out=str(tmp_path / "images"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and list((tmp_path / "images").glob("*.png"))
    assert result["quantizers"] and result["peft"], "diffusers no longer imports them: this test checks nothing"
    assert not result["after_load"], "loading a model imported bitsandbytes"
    assert result["after_optimizer"], result  # the 8-bit optimizers import it when asked
