"""The scrape process: every worker's metrics, read from the multiprocess files.

With several workers, scrapes are answered here rather than by a worker: rendering a big
registry takes a core for a while (about 100,000 lines take seconds), and in a worker that
is time its event loop would not serve the gateway. This process reads the files the
workers write (``app.multiprocess``), so its answer is every worker's total, and a scrape
never waits for a worker nor a worker for a scrape. It serves ``/metrics``,
``/prometheus/metrics/all`` and the category endpoints, with the same bearer token.

Started by ``gateway-metrics --workers N`` (on ``--metrics-port``, default port + 1) and
by ``deploy/gunicorn.conf.py``; by hand::

    PROMETHEUS_MULTIPROC_DIR=/run/gateway-metrics python -m app.exporter --port 8001
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from app import multiprocess


#: Added to the exporter's nice value: lower CPU priority than the workers.
NICENESS = 10


def command(host: str, port: int, log_level: str = "warning") -> list[str]:
    """The command line that starts the exporter (for supervisors and gunicorn hooks)."""
    return [sys.executable, "-m", "app.exporter", "--host", host, "--port", str(port),
            "--log-level", log_level]


def start(host: str, port: int, log_level: str = "warning") -> subprocess.Popen[bytes]:
    """Start the exporter as a child process; PROMETHEUS_MULTIPROC_DIR must be set."""
    return subprocess.Popen(command(host, port, log_level))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.exporter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if multiprocess.DIRECTORY is None:
        parser.exit(2, f"the exporter reads the workers' files: set {multiprocess.ENV_VAR}\n")

    import uvicorn

    from app.cli import metrics_only_app
    from app.collectors import register_collectors
    from app.settings import get_settings

    register_collectors()
    # Scrapes are background work: when the cores are all busy, the gateway's requests go
    # first (a scrape may take longer; Prometheus waits up to its scrape_timeout).
    os.nice(NICENESS)
    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY, which gunicorn's deployments
    # set for the gateway's workers, and refuse to start.
    uvicorn.run(metrics_only_app(get_settings()), host=args.host, port=args.port, workers=1,
                log_level=args.log_level, access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
