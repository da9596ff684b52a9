"""``GET /prometheus/metrics/summary``: the JSON summary for dashboards."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.catalogue import Category
from app.dependencies import ApiKeyDep, summary_service_of
from app.summary.models import Summary
from app.summary.service import SummaryService
from app.summary.snapshots import MAX_WINDOW_S

router = APIRouter(prefix="/prometheus/metrics", tags=["summary"], dependencies=[ApiKeyDep])


@router.get(
    "/summary",
    response_model=Summary,
    summary="JSON summary of one or more categories",
)
async def summary(
    request: Request,
    category: Annotated[
        list[Category] | None,
        Query(description="A category; may repeat. None means all."),
    ] = None,
    window_seconds: Annotated[
        int | None,
        Query(ge=10, le=MAX_WINDOW_S, description="Window of rates, ratios and percentiles."),
    ] = None,
    source: Annotated[
        Literal["auto", "local"],
        Query(description="auto: the backend when configured; local: this instance's registry."),
    ] = "auto",
) -> Response:
    """The summary; the body is serialized once by the service (and reused while its
    query results are cached), so it is returned as bytes rather than re-validated. A
    cached answer is served from the event loop; building one (blocking backend I/O)
    runs in the thread pool."""
    service: SummaryService = summary_service_of(request.app)
    categories = list(dict.fromkeys(category)) if category else list(Category)
    local = source == "local"
    body = service.cached_json(categories, window_seconds, local)
    if body is None:
        body = await run_in_threadpool(service.summary_json, categories, window_seconds, local)
    return Response(body, media_type="application/json")
