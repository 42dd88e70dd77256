#!/usr/bin/env bash
# Install the browser the end-to-end test (tests/ui/test_browser_e2e.py) drives: Debian's
# Chromium (apt). Playwright, which drives it, is in the `test` extra that setup-venv.sh installs;
# it is pointed at this Chromium, so no `playwright install` browser download is needed.
# Safe to re-run. Where apt is missing or not permitted, it says so and leaves the test to
# skip (or fail, with LORAKILN_E2E=required as in .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${LORAKILN_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null; then
    $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "setup-browser: could not apt-get install chromium; the browser test will not run" >&2
  else
    echo "setup-browser: no apt-get; install Chromium and set LORAKILN_CHROMIUM to its path" >&2
  fi
fi
exit 0
