#!/usr/bin/env bash
# Create ./.venv (if missing) and install lorakiln into it with the CPU torch wheel.
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
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
