#!/usr/bin/env bash
# The test command (`make test`): lint, then the whole pytest suite, ROS kept on this machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((1 + $$ % 100))}"
echo "[test] ruff check"
.venv/bin/ruff check .
echo "[test] pytest (ROS_DOMAIN_ID=$ROS_DOMAIN_ID, localhost-only discovery)"
exec .venv/bin/python -m pytest "$@"
