#!/usr/bin/env bash
# Set up and start gateway-metrics with simulated gateway traffic on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export GATEWAY_METRICS_DEMO="${GATEWAY_METRICS_DEMO:-true}"
exec .venv/bin/gateway-metrics --host "${GATEWAY_METRICS_HOST:-127.0.0.1}" --port "${GATEWAY_METRICS_PORT:-8000}" "$@"
