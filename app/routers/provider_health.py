"""``GET /prometheus/metrics/health``: every provider's health and the failover order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.dependencies import ApiKeyDep, TelemetryDep, summary_service_of
from app.routers.health import sharing_channels
from app.summary.models import SharingChannel, SummaryError
from app.summary.service import SummaryService

router = APIRouter(prefix="/prometheus/metrics", tags=["health"], dependencies=[ApiKeyDep])


class ProviderHealthModel(BaseModel):
    provider: str
    score: float | None = Field(description="0.4 availability + 0.3 (1 - error rate) + 0.3 latency score")
    availability: float | None
    error_rate: float | None
    latency_score: float | None = Field(description="Apdex on time to first token, or duration")
    state: str = Field(description="unknown, healthy, degraded or unavailable")
    circuit: str | None = Field(description="closed, open or half_open (fleet: open on any replica)")
    calls: int | None = Field(description="Calls in the window (local source)")
    in_flight: int | None = None
    rate_limited_until: datetime | None = None
    reasons: list[str] = Field(description="Why the provider scores and routes as it does")


class HealthReport(BaseModel):
    timestamp: datetime
    source: Literal["local", "fleet"]
    window_seconds: float
    providers: list[ProviderHealthModel]
    failover_order: list[str] = Field(description="Every provider, best first, as choose() ranks them")
    stale: bool = False
    errors: list[SummaryError] = []
    sharing: list[SharingChannel] = Field(
        default_factory=list,
        description="How this replica shares outcomes with its host's workers and the other replicas",
    )


@router.get("/health", response_model=HealthReport, summary="Provider health scores and failover order")
async def provider_health(
    request: Request,
    telemetry: TelemetryDep,
    source: Annotated[
        Literal["local", "fleet"],
        Query(description="local: this replica's tracker; fleet: computed from PromQL over all replicas."),
    ] = "local",
) -> HealthReport:
    tracker = telemetry.tracker
    now = datetime.now(UTC)
    if source == "local":
        snapshot = tracker.snapshot()
        order = tracker.choose([h.provider for h in snapshot], claim=False).order if snapshot else []
        providers = [
            ProviderHealthModel(
                provider=h.provider, score=h.score, availability=h.availability, error_rate=h.error_rate,
                latency_score=h.latency_score, state=h.state.value, circuit=h.circuit.value, calls=h.calls,
                in_flight=h.in_flight, rate_limited_until=h.rate_limited_until, reasons=h.reasons,
            )
            for h in snapshot
        ]
        return HealthReport(timestamp=now, source="local", window_seconds=tracker.config.window_s,
                            providers=providers, failover_order=order, sharing=sharing_channels(request.app))
    service: SummaryService = summary_service_of(request.app)
    figures, errors, stale = await run_in_threadpool(service.fleet_health)
    providers = [
        ProviderHealthModel(
            provider=name, score=f.score, availability=f.availability, error_rate=f.error_rate, latency_score=None,
            state=f.state, circuit=f.circuit, calls=None, reasons=[],
        )
        for name, f in figures.items()
    ]
    order = sorted(figures, key=lambda name: (figures[name].state == "unavailable", -(figures[name].score or 0)))
    return HealthReport(timestamp=now, source="fleet", window_seconds=tracker.config.window_s,
                        providers=providers, failover_order=order, stale=stale, errors=errors)
