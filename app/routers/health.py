"""Liveness and readiness; public even when a bearer token guards the metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.dependencies import telemetry_of
from app.summary.models import BackendReadiness, SharingChannel

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    backend: BackendReadiness
    health_sharing: list[SharingChannel] = Field(
        default_factory=list,
        description="How provider outcomes are shared with the host's workers and the other replicas "
        "(empty: this process decides alone)",
    )


def sharing_channels(app: object) -> list[SharingChannel]:
    """The sharing channels of the app's telemetry, as the answers show them."""
    return [
        SharingChannel(
            name=status.name, ok=status.ok, last_error=status.last_error,
            last_error_at=None if status.last_error_at is None else datetime.fromtimestamp(status.last_error_at, UTC),
            errors=status.errors, sent=status.sent, received=status.received, garbage=status.garbage,
            dropped=status.dropped,
        )
        for status in telemetry_of(app).sharing_status()
    ]


@router.get("/health", response_model=Liveness, summary="Liveness")
def health() -> Liveness:
    return Liveness()


@router.get("/ready", response_model=Readiness, summary="Readiness, with the backend's state")
def ready(request: Request) -> Readiness:
    """Ready as soon as the app serves; a down backend is reported, never a failure,
    because summaries then answer from the local registry."""
    service = getattr(request.app.state, "summary_service", None)
    backend = service.readiness() if service is not None else BackendReadiness(configured=False)
    return Readiness(backend=backend, health_sharing=sharing_channels(request.app))
