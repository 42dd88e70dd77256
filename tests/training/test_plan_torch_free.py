"""`lorakiln train --dry-run`, `lorakiln dataset check` and the UI's live step count print
arithmetic; they must not pay for importing torch (seconds) to do it.

Each case runs in a fresh interpreter (a subprocess), since this test session has torch loaded
already: the child calls `lorakiln.cli.main` and then reports whether `torch` entered
`sys.modules`, and the output must still carry the step arithmetic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "config.toml"

_CHILD = """
import json, sys
{body}
print(json.dumps({{"torch": "torch" in sys.modules}}))
"""


def _run(body: str, cwd: Path) -> tuple[str, bool]:
    """Run `body` in a fresh interpreter; its stdout and whether it imported torch."""
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(body=body)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    *out, last = proc.stdout.rstrip("\n").split("\n")
    return "\n".join(out), json.loads(last)["torch"]


def _kohya_folder(root: Path, images: int = 3, repeats: int = 15) -> Path:
    sub = root / "train" / f"{repeats}_zwx"
    sub.mkdir(parents=True)
    for i in range(images):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(sub / f"p{i}.png")
        (sub / f"p{i}.txt").write_text("photo of zwx, a toy", encoding="utf-8")
    return root / "train"


def _run_toml(tmp_path: Path) -> Path:
    """The quickstart run (AdamW, polynomial schedule, sample prompts) on a 3-image folder."""
    _kohya_folder(tmp_path)
    (tmp_path / "prompts.txt").write_text((QUICKSTART.parent / "prompts.txt").read_text(encoding="utf-8"),
                                          encoding="utf-8")
    toml = tmp_path / "run.toml"
    toml.write_text(QUICKSTART.read_text(encoding="utf-8"), encoding="utf-8")
    return toml


def test_train_dry_run_does_not_import_torch(tmp_path: Path) -> None:
    toml = _run_toml(tmp_path)
    body = f"from lorakiln.cli import main\nassert main(['train', {str(toml)!r}, '--dry-run']) == 0"
    out, torch_loaded = _run(body, tmp_path)
    # 3 images × 15 repeats = 45 samples, batch 2 → 23 batches per epoch, × 3 epochs = 69 steps
    assert "batches per epoch: 23" in out and "optimizer steps: 69" in out
    # the device and precision lines come from torch's version.py and the driver, not from torch
    assert "base model: tiny:sd1" in out and "\ndevice: " in out and "mixed_precision = 'no'" in out
    assert not torch_loaded, "train --dry-run imported torch"


def test_dataset_check_does_not_import_torch(tmp_path: Path) -> None:
    folder = _kohya_folder(tmp_path)
    body = f"from lorakiln.cli import main\nmain(['dataset', 'check', {str(folder)!r}])"
    out, torch_loaded = _run(body, tmp_path)
    assert "15_zwx: 3 images x 15 repeats = 45" in out and "optimizer steps: 45" in out
    assert not torch_loaded, "dataset check imported torch"


def test_ui_step_count_does_not_import_torch(tmp_path: Path) -> None:
    _kohya_folder(tmp_path)
    body = ("from lorakiln.ui.forms import load_run_toml, step_summary\n"
            f"values = load_run_toml({str(QUICKSTART)!r}) | {{'data.train_data_dir': 'train', "
            "'train.max_train_epochs': 5, 'train.train_batch_size': 1}\n"
            f"print(step_summary(values, {str(tmp_path)!r}))")
    out, torch_loaded = _run(body, tmp_path)
    assert "optimizer steps: 225" in out  # 3 images × 15 repeats × 5 epochs / batch 1
    assert not torch_loaded, "the UI's step count imported torch"


def test_dry_run_checks_network_weights_without_torch(tmp_path: Path) -> None:
    """`network_weights` against the config's network (ranks, layers) comes from the file's header."""
    import numpy as np
    from safetensors.numpy import save_file

    toml = _run_toml(tmp_path)
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    tensors = {}
    for proj in ("to_q", "to_k", "to_v", "to_out_0"):
        tensors[f"{block}_attn1_{proj}.lora_down.weight"] = np.zeros((4, 32), np.float32)
        tensors[f"{block}_attn1_{proj}.lora_up.weight"] = np.zeros((32, 4), np.float32)
    save_file(tensors, str(tmp_path / "attn.safetensors"))
    body = ("from lorakiln.cli import main\nsys.stderr = sys.stdout\n"
            f"code = main(['train', {str(toml)!r}, '--dry-run', '--set', 'network.network_weights=\"attn.safetensors\"'])\n"
            "print('exit', code)\n"
            f"assert main(['train', {str(toml)!r}, '--dry-run', '--set', 'network.network_weights=\"attn.safetensors\"', "
            "'--set', 'network.dim_from_weights=true']) == 0")
    out, torch_loaded = _run(body, tmp_path)
    assert "has rank 4 but network.network_dim is 8" in out and "exit 2" in out
    assert not torch_loaded, "train --dry-run imported torch to check network_weights"
