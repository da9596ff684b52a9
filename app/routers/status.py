"""``GET /prometheus/metrics/status``: the live status page, one self-contained HTML document;
``GET /prometheus/metrics/trends``: the history its charts open with.

The page is a shell: the markup, style and script of ``app/static``, inlined into one
response, with no figure in it. Its script reads ``health``, ``summary`` and ``trends``
beside it with the bearer token, so the shell itself is public even when ``GATEWAY_METRICS_API_KEY`` is
set: a browser cannot send a bearer header when it navigates to a page, and the shell holds
nothing the token guards. The token stays in the tab's ``sessionStorage``, never in a URL.

A Content-Security-Policy admits only this page's own script and style (by hash) and
connections to this origin: model names come from callers, and although the script only
ever writes them as text, a stray injection could not run or send the token anywhere.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from app.dependencies import ApiKeyDep, summary_service_of
from app.summary.service import SummaryService
from app.summary.snapshots import MAX_WINDOW_S
from app.summary.trends import DEFAULT_SPAN_S, MAX_POINTS, MAX_SPAN_S, Trends, point_count, trend_history

router = APIRouter(prefix="/prometheus/metrics", tags=["status"])

#: Mounted by ``create_app`` only: a gateway embedding the routers keeps its own ``/``.
standalone_router = APIRouter(include_in_schema=False)

STATIC = "static"


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@lru_cache(maxsize=1)
def status_page() -> tuple[bytes, dict[str, str]]:
    """The page with its style and script inlined, and its response headers (built once)."""
    static = resources.files("app") / STATIC
    html = (static / "status.html").read_text(encoding="utf-8")
    css = (static / "status.css").read_text(encoding="utf-8")
    js = (static / "status.js").read_text(encoding="utf-8")
    body = html.replace("/*STYLE*/", css, 1).replace("/*SCRIPT*/", js, 1)
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {_csp_hash(js)}",
        f"style-src {_csp_hash(css)}",
        "img-src data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",  # the token form never submits: no token in a URL, even without JS
        "frame-ancestors 'none'",
    ))
    headers = {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return body.encode("utf-8"), headers


@router.get(
    "/status",
    response_class=Response,
    responses={200: {"content": {"text/html": {}},
                     "description": "The live status page (a shell: its figures come from "
                                    "/health and /summary, behind the bearer token if set)."}},
    summary="Live status page",
    name="status_page",
)
async def status() -> Response:
    body, headers = status_page()
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


@router.get(
    "/trends",
    response_model=Trends,
    dependencies=[ApiKeyDep],
    summary="Trend series of the last minutes (the status page's history)",
)
async def trends(
    request: Request,
    span_seconds: Annotated[
        int, Query(ge=60, le=MAX_SPAN_S, description="How far back the history goes."),
    ] = DEFAULT_SPAN_S,
    step_seconds: Annotated[
        int | None,
        Query(ge=1, le=600, description=f"Seconds between points at least; span / step is at most {MAX_POINTS}. "
                                        "Default: about 180 points."),
    ] = None,
    window_seconds: Annotated[
        int | None,
        Query(ge=10, le=MAX_WINDOW_S, description="Window of each point's rate and p95, as in the summary."),
    ] = None,
    source: Annotated[
        Literal["auto", "local"],
        Query(description="auto: the backend's range queries when configured; local: this instance's history."),
    ] = "auto",
) -> Trends:
    """Requests per second, latency p95 and each provider's health score, one point per
    step; never an error for backend trouble (the local history answers, ``errors`` says why)."""
    if step_seconds is not None and point_count(span_seconds, step_seconds) > MAX_POINTS + 1:
        least = -(-span_seconds // MAX_POINTS)
        raise RequestValidationError([{
            "type": "value_error", "loc": ("query", "step_seconds"), "input": step_seconds,
            "msg": f"{span_seconds} s every {step_seconds} s is more than {MAX_POINTS} points: "
                   f"step_seconds must be at least {least} for this span",
        }])
    service: SummaryService = summary_service_of(request.app)
    return await run_in_threadpool(trend_history, service, span_s=span_seconds, step_s=step_seconds,
                                   window_s=window_seconds, local=source == "local")


@standalone_router.get("/")
async def root(request: Request) -> RedirectResponse:
    """``/`` opens the status page (the path keeps any ``root_path`` the app is mounted at)."""
    return RedirectResponse(request.url_for("status_page").path, status_code=307)
