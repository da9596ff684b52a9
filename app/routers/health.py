"""Liveness and readiness; public even when a bearer token guards the metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.summary.models import BackendReadiness

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    backend: BackendReadiness


@router.get("/health", response_model=Liveness, summary="Liveness")
def health() -> Liveness:
    return Liveness()


@router.get("/ready", response_model=Readiness, summary="Readiness, with the backend's state")
def ready(request: Request) -> Readiness:
    """Ready as soon as the app serves; a down backend is reported, never a failure,
    because summaries then answer from the local registry."""
    service = getattr(request.app.state, "summary_service", None)
    backend = service.readiness() if service is not None else BackendReadiness(configured=False)
    return Readiness(backend=backend)
