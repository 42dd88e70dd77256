#!/usr/bin/env bash
# Create ./.venv (if missing) and install lorakiln into it with the CPU torch wheel: what training
# needs, plus the WD14 tagger's ONNX Runtime (`lorakiln caption --method tagger`, README step 2).
# No test tooling: scripts/test.sh adds the `test` extra (pytest, ruff, playwright, lycoris-lora).
# Used by the README's two commands; safe to re-run (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first, pinned: an unpinned torch from another package's requirements would pull a
# multi-GB CUDA build. Set LORAKILN_TORCH to choose another (e.g. a CUDA wheel on a GPU box).
.venv/bin/python -m pip install -q --disable-pip-version-check "${LORAKILN_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[tagger]"
