#!/usr/bin/env bash
# Install, then run the whole test suite (and ruff). Exits non-zero on any failure,
# including pytest's exit 5 ("no tests collected").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/setup-browser.sh
.venv/bin/python -m ruff check src tests bench examples
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
