#!/usr/bin/env bash
# The README's main command (`make demo`): simulated camera -> gst_node with the shipped small
# model; live rotation error and latency, then a summary and outputs/demo/candidates.png.
# ROS traffic stays on this machine: localhost-only discovery and a private domain id.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${GST_DEMO_DOMAIN_ID:-$((1 + $$ % 100))}"
echo "[demo.sh] ROS_DOMAIN_ID=$ROS_DOMAIN_ID, discovery localhost only"
exec .venv/bin/gst demo --frames "${FRAMES:-30}" --out outputs/demo "$@"
