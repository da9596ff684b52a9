"""The application factory: ``create_app(settings)``; ``app`` is the default instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.collectors import gauge_publisher, register_collectors
from app.http_stats import HTTP_STATS
from app.middleware import MetricsMiddleware
from app.registry import METRICS
from app.routers import docs, health, metrics, provider_health, status, summary
from app.scoring import HealthConfig, HealthTracker, ProbeRunner, get_tracker, set_tracker
from app.settings import Settings, get_settings
from app.summary.snapshots import Snapshots
from app.summary.service import SummaryService, backend_from_settings

_snapshots: Snapshots | None = None


def local_snapshots(interval: float, budget_mb: float = 64.0) -> Snapshots:
    """The process's one history of its registry (every app of the process shares it)."""
    global _snapshots
    if _snapshots is None:
        _snapshots = Snapshots(METRICS.all_registry, interval=interval, budget_bytes=int(budget_mb * 2**20))
    return _snapshots


def configure_tracker(settings: Settings) -> None:
    """Give the process's health tracker these settings' scoring config (a new tracker
    only when the config differs, so apps sharing settings share their history)."""
    config = HealthConfig(
        weights=settings.health_weights, apdex_threshold_s=settings.apdex_threshold_seconds
    )
    if get_tracker().config != config:
        set_tracker(HealthTracker(config))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; may run many times in one process (tests, two apps).

    Every app of a process shares the process's metric registry, as every gateway worker
    records into one registry; each app has its own settings.
    """
    settings = settings or get_settings()
    METRICS.set_label_cap(settings.label_cap)
    HTTP_STATS.set_label_cap(settings.label_cap)
    METRICS.set_series_cap(settings.series_cap)
    HTTP_STATS.set_series_cap(settings.series_cap)
    configure_tracker(settings)
    register_collectors()
    snapshots = local_snapshots(settings.snapshot_interval_seconds, settings.summary_history_mb)
    summary_service = SummaryService(settings, snapshots, backend_from_settings(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        snapshots.start()
        publisher = gauge_publisher()
        if publisher is not None:
            publisher.start()
        probes = ProbeRunner(get_tracker(), settings.probe_urls, settings.probe_interval_seconds,
                             unhealthy_interval_s=settings.probe_unhealthy_interval_seconds)
        probes.start()
        tasks: list[asyncio.Task[None]] = []
        if settings.demo:
            from app.demo import DemoTraffic

            tasks.append(asyncio.create_task(DemoTraffic(settings).run(), name="demo-traffic"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await probes.stop()
            if publisher is not None:
                publisher.stop()
            summary_service.close()

    app = FastAPI(
        title="gateway-metrics",
        version=__version__,
        summary="Metrics, summaries and provider health for an LLM API gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.summary_service = summary_service
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(summary.router)
    app.include_router(provider_health.router)
    app.include_router(docs.router)
    # Last, so requests for the routes above are matched without walking past these.
    app.include_router(status.router)
    app.include_router(status.standalone_router)  # `/` -> the status page; not in embedded gateways
    app.add_middleware(MetricsMiddleware, access_log=settings.access_log)
    return app


app = create_app()
