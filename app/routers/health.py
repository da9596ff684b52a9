"""Liveness and readiness; public even when a bearer token guards the metrics."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
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


class NotReady(BaseModel):
    status: Literal["starting"] = "starting"
    waiting_for: str = Field(description="What the process waits for before it is ready")


#: How long /ready waits for the exporter's port to accept a connection.
EXPORTER_CONNECT_TIMEOUT_S = 0.5


def exporter_listens(host: str, port: int) -> bool:
    """Whether the exporter of ``gateway-metrics --workers`` accepts connections (it binds
    the workers' host; a wildcard address is reached on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=EXPORTER_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


@router.get("/ready", response_model=Readiness, summary="Readiness, with the backend's state",
            responses={503: {"model": NotReady, "description": "Not ready yet: a port of the process does not listen"}})
def ready(request: Request) -> Readiness | JSONResponse:
    """Ready as soon as the app serves (with ``--workers``, once the exporter's port listens
    too); a down backend or Redis is reported, never a failure, because summaries then
    answer from the local registry and health is decided locally."""
    settings = getattr(request.app.state, "settings", None)
    port = getattr(settings, "exporter_port", None)
    if settings is not None and port is not None and not exporter_listens(settings.host, port):
        return JSONResponse(NotReady(waiting_for=f"the exporter on port {port}").model_dump(), status_code=503)
    service = getattr(request.app.state, "summary_service", None)
    backend = service.readiness() if service is not None else BackendReadiness(configured=False)
    return Readiness(backend=backend, health_sharing=sharing_channels(request.app))
