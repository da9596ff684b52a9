"""The scrape process: every worker's metrics, read from the multiprocess files.

With several workers, scrapes are answered here rather than by a worker: a scrape of a big
registry takes a core for tens of milliseconds (about 100,000 lines, the more of them
changed since the last scrape the longer: docs/BENCHMARKS.md, "Scrape render"), and in a
worker that is time its event loop would not serve the gateway. This process reads the files the
workers write (``app.multiprocess``), so its answer is every worker's total, and a scrape
never waits for a worker nor a worker for a scrape. It serves ``/metrics``,
``/prometheus/metrics/all`` and the category endpoints, with the same bearer token.

Started by ``gateway-metrics --workers N`` (on ``--metrics-port``, default port + 1) and
by ``deploy/gunicorn.conf.py``; by hand::

    PROMETHEUS_MULTIPROC_DIR=/run/gateway-metrics python -m app.exporter --port 8001
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from app import multiprocess, supervision

#: Added to the exporter's nice value: lower CPU priority than the workers.
NICENESS = 10


def command(host: str, port: int, log_level: str = "warning", *, parent_pid: int | None = None,
            wait_for_port_s: float = 0.0) -> list[str]:
    """The command line that starts the exporter (for supervisors and gunicorn hooks)."""
    argv = [sys.executable, "-m", "app.exporter", "--host", host, "--port", str(port), "--log-level", log_level]
    if parent_pid is not None:
        argv += ["--parent-pid", str(parent_pid)]
    if wait_for_port_s:
        argv += ["--wait-for-port", f"{wait_for_port_s:g}"]
    return argv


def start(host: str, port: int, log_level: str = "warning", *, wait_for_port_s: float = 0.0
          ) -> subprocess.Popen[bytes]:
    """Start the exporter as a child process that ends with this one (even when this one
    is killed with SIGKILL); PROMETHEUS_MULTIPROC_DIR must be set."""
    return subprocess.Popen(command(host, port, log_level, parent_pid=os.getpid(),
                                    wait_for_port_s=wait_for_port_s))


def bind(host: str, port: int, wait_s: float = 0.0) -> socket.socket:
    """The listening socket, waiting up to ``wait_s`` while another process holds the port
    (the exporter of a gunicorn master being replaced, which leaves when its master does)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
            continue
        return sock


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.exporter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--parent-pid", type=int,
                        help="stop when this process (the supervisor that started it) is gone")
    parser.add_argument("--wait-for-port", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for the port while another process holds it")
    args = parser.parse_args(argv)
    if multiprocess.DIRECTORY is None:
        parser.exit(2, f"the exporter reads the workers' files: set {multiprocess.ENV_VAR}\n")

    import uvicorn

    from app.collectors import register_files_collectors
    from app.registry import MetricSet
    from app.routers.metrics import scrape_only_app
    from app.settings import get_settings

    # What the exporter serves, and nothing more: a metric set that reads every worker's files.
    metric_set = MetricSet(in_files=True)
    register_files_collectors(metric_set, multiprocess.DIRECTORY)
    if args.parent_pid is not None:
        # Before the wait for the port: a supervisor may die while its exporter waits.
        supervision.exit_with_parent(args.parent_pid)
    sock = bind(args.host, args.port, args.wait_for_port)
    # Scrapes are background work: when the cores are all busy, the gateway's requests go
    # first (a scrape may take longer; Prometheus waits up to its scrape_timeout).
    os.nice(NICENESS)
    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY, which gunicorn's deployments
    # set for the gateway's workers, and refuse to start.
    config = uvicorn.Config(scrape_only_app(get_settings(), metric_set), workers=1, log_level=args.log_level,
                            access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
