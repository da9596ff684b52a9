#!/usr/bin/env bash
# Set up and run the whole test suite (ruff, mypy, pytest): Python deps into .venv, and the Debian packages
# prometheus (with promtool), prometheus-alertmanager (with amtool), victoria-metrics, redis-server,
# docker-compose and chromium when their binaries are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
# Replicas share outcomes through Redis (tests/scoring/test_redis_channel.py runs a real one).
command -v redis-server >/dev/null || missing+=(redis-server)
# Checks and delivers the alerts of deploy/alertmanager (Debian names the binary prometheus-alertmanager).
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || missing+=(docker-compose)  # validates docker-compose.yml offline
# The status page tests drive Debian's chromium through Playwright (no browser download).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

scripts/setup.sh test
# Lint and types first: seconds, and a failure names the line.
.venv/bin/ruff check app tests benchmarks scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
