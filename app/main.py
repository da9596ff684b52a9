"""The application factory: ``create_app(settings, telemetry)``.

``app.main:app`` (what ``uvicorn app.main:app`` serves) is the default instance, built on
first access: importing this module builds nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__, supervision
from app.middleware import MetricsMiddleware
from app.routers import docs, health, metrics, provider_health, status, summary
from app.settings import Settings, get_settings
from app.summary.service import SummaryService, backend_from_settings
from app.telemetry import Telemetry, default, health_config

_log = logging.getLogger("gateway_metrics")


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> FastAPI:
    """Build the service; may run many times in one process (tests, two apps).

    The app serves and records into ``telemetry``, else the process's default one (which
    ``app.metrics`` records into), made from ``settings`` if it does not exist yet. Apps
    with their own ``Telemetry`` share nothing.
    """
    settings = settings or get_settings()
    if telemetry is None:
        telemetry = default(settings)
        _warn_if_recorded_elsewhere(settings, telemetry)
    summary_service = SummaryService(settings, telemetry.snapshots, backend_from_settings(settings),
                                     tracker=telemetry.tracker, top_lists=telemetry.top_lists)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.supervisor_pid is not None:  # a worker of `gateway-metrics --workers`
            supervision.exit_with_parent(settings.supervisor_pid)
        telemetry.start()
        tasks: list[asyncio.Task[None]] = []
        if settings.demo:
            from app.demo import DemoTraffic

            tasks.append(asyncio.create_task(DemoTraffic(settings, telemetry).run(), name="demo-traffic"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(telemetry.stop)
            summary_service.close()

    app = FastAPI(
        title="gateway-metrics",
        version=__version__,
        summary="Metrics, summaries and provider health for an LLM API gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.summary_service = summary_service
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(summary.router)
    app.include_router(provider_health.router)
    app.include_router(docs.router)
    # Last, so requests for the routes above are matched without walking past these.
    app.include_router(status.router)
    app.include_router(status.standalone_router)  # `/` -> the status page; not in embedded gateways
    app.add_middleware(MetricsMiddleware, access_log=settings.access_log, telemetry=telemetry)
    return app


def _warn_if_recorded_elsewhere(settings: Settings, telemetry: Telemetry) -> None:
    """Say so when the default telemetry was made with other recording settings than the
    app's: its caps and scoring, not the app's, apply."""
    made = telemetry.settings
    if (made.label_cap, made.series_cap, health_config(made)) != (
        settings.label_cap, settings.series_cap, health_config(settings)
    ):
        _log.warning(
            "the process's default telemetry was made with other caps or scoring settings than "
            "this app's; they apply. Pass telemetry=Telemetry(settings) for an app of its own."
        )


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        service = globals()["app"] = create_app()
        return service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
