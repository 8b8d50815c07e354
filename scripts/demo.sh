#!/usr/bin/env bash
# The main job: simulator, edge agent and hub on the embedded default (SQLite, local disk under ./data/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vms demo "$@"
