#!/usr/bin/env bash
# The main job: install, then teach the shipped toy base model "zwx" (an orange star) with a LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/lorakiln train examples/toy-quickstart/config.toml "$@"
