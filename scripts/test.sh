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
# Two workers (pytest-xdist), each test file on one of them, one torch thread each: the two cores
# stay busy through the many tests that wait on imports, subprocesses and files, and never
# oversubscribe (two processes of two OpenMP threads each spin against each other). Files go out
# in collection order, the longest first (tests/conftest.py: SLOW_FIRST), not xdist's default of
# files with the most tests first, which left the few long ones to the end.
# LORAKILN_TEST_WORKERS=0 runs the suite in this one process.
workers="${LORAKILN_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
else
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" \
        .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
