"""The ``gateway-metrics`` console script: serve the app with uvicorn.

``gateway-metrics --demo`` starts it with simulated traffic. Flags override the
``GATEWAY_METRICS_*`` settings of the same name.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.routers.metrics import router as metrics_router
from app.settings import Settings


def metrics_only_app(settings: Settings) -> FastAPI:
    """The internal scrape port: ``/metrics`` and the category endpoints, nothing public."""
    internal = FastAPI(title="gateway-metrics (internal)", openapi_url=None, docs_url=None)
    internal.state.settings = settings
    internal.include_router(metrics_router)
    return internal


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway-metrics", description=__doc__)
    parser.add_argument("--host", help="bind address (GATEWAY_METRICS_HOST)")
    parser.add_argument("--port", type=int, help="port (GATEWAY_METRICS_PORT)")
    parser.add_argument("--metrics-port", type=int, help="internal /metrics port (GATEWAY_METRICS_METRICS_PORT)")
    parser.add_argument("--demo", action="store_true", default=None, help="simulated traffic (GATEWAY_METRICS_DEMO)")
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
    servers = [
        uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                      log_level=args.log_level, access_log=False))
    ]
    if settings.metrics_port is not None:
        servers.append(uvicorn.Server(uvicorn.Config(
            metrics_only_app(settings), host=settings.host, port=settings.metrics_port,
            log_level=args.log_level, access_log=False, lifespan="off")))
    asyncio.run(_serve(servers))


async def _serve(servers: list[uvicorn.Server]) -> None:
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    main()
