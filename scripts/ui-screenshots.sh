#!/usr/bin/env bash
# Refresh the UI screenshots shown in docs/ui.md: run the browser test (it writes a screenshot of
# every tab, idle and during a run, and of each stage to test-artifacts/ui-e2e/), then copy the
# ones the docs show into docs/images/ui/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"  # pytest, playwright
bash scripts/setup-browser.sh
LORAKILN_E2E=required .venv/bin/python -m pytest -q -p no:cacheprovider tests/ui/test_browser_e2e.py
for name in {dataset,caption,train,test,tools}-{idle,running} caption-offline train-refused train-done test-grid tools-info; do
    cp "test-artifacts/ui-e2e/$name.png" "docs/images/ui/$name.png"
done
echo "docs/images/ui refreshed from test-artifacts/ui-e2e"
