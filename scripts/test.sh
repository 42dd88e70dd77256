#!/usr/bin/env bash
# Install, add the test tools, then run ruff and the whole test suite. Exits non-zero on any
# failure, including pytest's exit 5 ("no tests collected").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# The `test` extra (pytest, ruff, playwright, lycoris-lora, onnx): for the tests only, so the
# set-up for training (setup-venv.sh, `pip install lorakiln`) does not install it.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
bash scripts/setup-browser.sh
.venv/bin/python -m ruff check src tests bench examples
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
