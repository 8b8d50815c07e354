#!/usr/bin/env bash
# The main job on the embedded default: SQLite and local disk under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vms serve --config config/hub.example.yaml "$@"
