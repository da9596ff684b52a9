"""Prometheus text endpoints: ``/metrics``, ``/prometheus/metrics/all`` and the categories.

They expose the metric set of the app serving the request: ``app.state.metric_set`` when
set (the exporter's reads every worker's files), else its telemetry's (``app.state.telemetry``,
else the process's default).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response

from app.catalogue import Category
from app.dependencies import ApiKeyDep, telemetry_of
from app.exposition import render
from app.registry import MetricSet
from app.settings import Settings

router = APIRouter(tags=["metrics"], dependencies=[ApiKeyDep])

_SCRAPE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text 0.0.4, or OpenMetrics 1.0 when Accept asks for it.",
        "content": {"text/plain": {}, "application/openmetrics-text": {}},
    },
    401: {"description": "Missing or wrong bearer token (when GATEWAY_METRICS_API_KEY is set)."},
}


def scrape(metric_set: MetricSet, category: Category | None, accept: str | None, accept_encoding: str | None,
           names: list[str] | None) -> Response:
    registry = metric_set.all_registry if category is None else metric_set.category_registries[category]
    exposition = render(registry, accept, accept_encoding, names or (), metric_set.renderer)
    return Response(exposition.body, media_type=exposition.media_type, headers=exposition.headers)


AcceptHeader = Annotated[str | None, Header()]
AcceptEncodingHeader = Annotated[str | None, Header()]
NameFilter = Annotated[
    list[str] | None,
    Query(alias="name[]", description="Only these families (sample names), as in prometheus_client."),
]


def _add_scrape_route(path: str, category: Category | None, summary: str, name: str) -> None:
    def scrape_route(
        request: Request,
        accept: AcceptHeader = None,
        accept_encoding: AcceptEncodingHeader = None,
        names: NameFilter = None,
    ) -> Response:
        metric_set: MetricSet | None = getattr(request.app.state, "metric_set", None)
        if metric_set is None:
            metric_set = telemetry_of(request.app).metrics
        return scrape(metric_set, category, accept, accept_encoding, names)

    router.add_api_route(path, scrape_route, methods=["GET"], response_class=Response,
                         responses=_SCRAPE_RESPONSE, summary=summary, name=name)


_add_scrape_route("/metrics", None, "Every metric family", "metrics")
_add_scrape_route("/prometheus/metrics/all", None, "Every metric family", "all_metrics")
for _category in Category:
    _add_scrape_route(
        f"/prometheus/metrics/{_category.value}",
        _category,
        f"The {_category.value} families only",
        f"{_category.value}_metrics",
    )


def scrape_only_app(settings: Settings, metric_set: MetricSet) -> FastAPI:
    """An app serving ``/metrics`` and the category endpoints of ``metric_set``, nothing
    else: the internal metrics port, and the exporter of several workers."""
    internal = FastAPI(title="gateway-metrics (internal)", openapi_url=None, docs_url=None)
    internal.state.settings = settings
    internal.state.metric_set = metric_set
    internal.include_router(router)
    return internal
