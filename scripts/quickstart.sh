#!/usr/bin/env bash
# The main job: install, then train the quickstart LoRA on the tiny built-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/lorakiln train examples/quickstart/config.toml "$@"
