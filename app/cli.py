"""The ``gateway-metrics`` console script: serve the app with uvicorn.

``gateway-metrics --demo`` starts it with simulated traffic. Flags override the
``GATEWAY_METRICS_*`` settings of the same name.

``gateway-metrics --workers N`` serves it with N worker processes in prometheus_client's
multiprocess mode: this process owns ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary one
when unset), empties it before any worker starts, and starts the exporter process
(``app.exporter``) that answers scrapes for all workers on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Sequence

import uvicorn
from uvicorn.supervisors import Multiprocess

from app import exporter, multiprocess
from app.main import create_app
from app.routers.metrics import scrape_only_app
from app.settings import Settings
from app.telemetry import default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway-metrics", description=__doc__)
    parser.add_argument("--host", help="bind address (GATEWAY_METRICS_HOST)")
    parser.add_argument("--port", type=int, help="port (GATEWAY_METRICS_PORT)")
    parser.add_argument("--metrics-port", type=int, help="internal /metrics port (GATEWAY_METRICS_METRICS_PORT)")
    parser.add_argument("--demo", action="store_true", default=None, help="simulated traffic (GATEWAY_METRICS_DEMO)")
    parser.add_argument("--workers", type=int, help="worker processes, in multiprocess mode; "
                        "scrapes go to the exporter on --metrics-port (default: port + 1)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port),
                           ("metrics_port", args.metrics_port), ("demo", args.demo))
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.workers is not None:
        serve_workers(settings, overrides, args.workers, args.log_level)
        return
    telemetry = default(settings)
    servers = [
        uvicorn.Server(uvicorn.Config(create_app(settings, telemetry), host=settings.host, port=settings.port,
                                      log_level=args.log_level, access_log=False,
                                      timeout_graceful_shutdown=DRAIN_S))
    ]
    if settings.metrics_port is not None:
        # The internal scrape port: /metrics and the category endpoints, nothing public.
        servers.append(uvicorn.Server(uvicorn.Config(
            scrape_only_app(settings, telemetry.metrics), host=settings.host, port=settings.metrics_port,
            log_level=args.log_level, access_log=False, lifespan="off")))
    asyncio.run(_serve(servers))


WORKER_HEALTHCHECK_S = 30
#: On SIGTERM, how long requests in flight may take before their connections are closed
#: (uvicorn's graceful shutdown); then the lifespan's shutdown runs. With the exporter's
#: stop below, the whole pod ends well within Kubernetes' default 30 s grace period less
#: deploy/kubernetes' 5 s preStop sleep.
DRAIN_S = 15
#: How long the exporter may take to stop before it is killed.
EXPORTER_STOP_S = 5


def serve_workers(settings: Settings, overrides: dict[str, object], workers: int, log_level: str) -> None:
    """N uvicorn workers writing to one multiprocess directory, and the exporter reading it."""
    if workers < 1:
        raise SystemExit("--workers must be at least 1")
    path = os.environ.get(multiprocess.ENV_VAR) or tempfile.mkdtemp(prefix="gateway-metrics-")
    # Before any worker exists: a previous run's files would add to this run's totals.
    os.environ[multiprocess.ENV_VAR] = multiprocess.prepare_directory(path)
    # The workers read their settings from the environment: pass the flags on.
    for key, value in overrides.items():
        if key != "metrics_port":
            os.environ[f"GATEWAY_METRICS_{key.upper()}"] = str(value)
    # And who supervises them: a worker stops when this process dies, even by SIGKILL
    # (app.supervision), rather than keep the port without an exporter.
    os.environ["GATEWAY_METRICS_SUPERVISOR_PID"] = str(os.getpid())
    metrics_port = settings.metrics_port or settings.port + 1
    # A worker's /ready answers 503 until the exporter listens: a readiness probe on the
    # workers' port must not pass while scrapes would still be refused.
    os.environ["GATEWAY_METRICS_EXPORTER_PORT"] = str(metrics_port)
    logging.getLogger("gateway_metrics").info(
        "%d workers on port %d; scrapes for all of them on port %d (%s=%s)",
        workers, settings.port, metrics_port, multiprocess.ENV_VAR, path)
    scraper = exporter.start(settings.host, metrics_port)
    try:
        # uvicorn kills a worker that does not answer its health ping within this time;
        # its 5 s default kills workers still importing on a busy machine, again and again.
        config = uvicorn.Config("app.main:app", host=settings.host, port=settings.port, workers=workers,
                                log_level=log_level, access_log=False,
                                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                                timeout_graceful_shutdown=DRAIN_S)
        Multiprocess(config, sockets=[declared_tcp(config.bind_socket())]).run()
    finally:
        scraper.terminate()
        try:
            scraper.wait(EXPORTER_STOP_S)
        except subprocess.TimeoutExpired:
            scraper.kill()
            scraper.wait()


def declared_tcp(sock: socket.socket) -> socket.socket:
    """The same listening socket, with its protocol declared as TCP.

    uvicorn binds the workers' socket with ``proto`` 0 and asyncio enables TCP_NODELAY only
    on accepted sockets whose ``proto`` is TCP: without it, every response on a kept-alive
    connection waits about 40 ms for the client's delayed ACK (uvicorn issue #3149).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


async def _serve(servers: list[uvicorn.Server]) -> None:
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    main()
