"""Shared FastAPI dependencies, as ``Annotated`` aliases the routers import.

They are ``async def`` because they do no I/O: FastAPI runs a sync dependency in its
thread pool, a hop that costs more than the check itself.
"""

from __future__ import annotations

import hmac
import threading
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request, status

from app.settings import Settings

if TYPE_CHECKING:
    from app.summary.service import SummaryService
    from app.telemetry import Telemetry

_summary_lock = threading.Lock()


async def get_app_settings(request: Request) -> Settings:
    """The settings of the app serving this request (``create_app`` stores them)."""
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def telemetry_of(app: Any) -> Telemetry:
    """The telemetry an app serves: ``app.state.telemetry`` (``create_app`` sets it), else
    the process's default (a gateway that mounts the routers and records with ``app.metrics``)."""
    telemetry: Telemetry | None = getattr(app.state, "telemetry", None)
    if telemetry is None:
        from app.telemetry import default  # the exporter serves scrapes without any telemetry

        telemetry = default()
    return telemetry


async def get_telemetry(request: Request) -> Telemetry:
    return telemetry_of(request.app)


def summary_service_of(app: Any) -> SummaryService:
    """The summary service of an app: ``app.state.summary_service`` (``create_app`` sets it
    and closes it on shutdown), else one made on first use from the app's settings and
    telemetry and kept on its state, for a gateway that mounts the routers itself."""
    service: SummaryService | None = getattr(app.state, "summary_service", None)
    if service is not None:
        return service
    from app.summary.service import SummaryService, backend_from_settings

    with _summary_lock:
        service = getattr(app.state, "summary_service", None)
        if service is None:
            telemetry = telemetry_of(app)
            settings = getattr(app.state, "settings", None) or telemetry.settings
            service = SummaryService(settings, telemetry.snapshots, backend_from_settings(settings),
                                     tracker=telemetry.tracker, top_lists=telemetry.top_lists)
            app.state.summary_service = service
    return service


if TYPE_CHECKING:
    TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
else:  # FastAPI validates nothing a dependency returns: the exporter need not import app.telemetry
    TelemetryDep = Annotated[object, Depends(get_telemetry)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Check the bearer token when ``GATEWAY_METRICS_API_KEY`` is set; 401 otherwise."""
    expected = settings.bearer_token
    if expected is None:
        return
    # The header's raw bytes (Starlette decodes them as latin-1, losslessly): a non-ASCII
    # key then matches byte for byte, and bytes.strip() trims ASCII whitespace only, never
    # a byte of a UTF-8 character (0xA0 is one).
    raw = request.headers.get("authorization", "").encode("latin-1")
    scheme, _, token = raw.partition(b" ")
    # compare_digest on two bytes objects: its time does not depend on where the tokens
    # differ, and it cannot raise (it refuses non-ASCII str).
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="gateway-metrics"'},
        )


ApiKeyDep = Depends(require_api_key)
