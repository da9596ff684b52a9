"""Prometheus text endpoints: ``/metrics``, ``/prometheus/metrics/all`` and the categories."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from prometheus_client import CollectorRegistry

from app.catalogue import Category
from app.dependencies import ApiKeyDep
from app.exposition import render
from app.registry import METRICS

router = APIRouter(tags=["metrics"], dependencies=[ApiKeyDep])

_SCRAPE_RESPONSE = {
    200: {
        "description": "Prometheus text 0.0.4, or OpenMetrics 1.0 when Accept asks for it.",
        "content": {"text/plain": {}, "application/openmetrics-text": {}},
    },
    401: {"description": "Missing or wrong bearer token (when GATEWAY_METRICS_API_KEY is set)."},
}


def scrape(registry: CollectorRegistry, accept: str | None, accept_encoding: str | None,
           names: list[str] | None) -> Response:
    exposition = render(registry, accept, accept_encoding, names or ())
    return Response(exposition.body, media_type=exposition.media_type, headers=exposition.headers)


AcceptHeader = Annotated[str | None, Header()]
AcceptEncodingHeader = Annotated[str | None, Header()]
NameFilter = Annotated[
    list[str] | None,
    Query(alias="name[]", description="Only these families (sample names), as in prometheus_client."),
]


def _add_scrape_route(path: str, registry: CollectorRegistry, summary: str, name: str) -> None:
    def scrape_route(
        accept: AcceptHeader = None,
        accept_encoding: AcceptEncodingHeader = None,
        names: NameFilter = None,
    ) -> Response:
        return scrape(registry, accept, accept_encoding, names)

    router.add_api_route(path, scrape_route, methods=["GET"], response_class=Response,
                         responses=_SCRAPE_RESPONSE, summary=summary, name=name)


_add_scrape_route("/metrics", METRICS.all_registry, "Every metric family", "metrics")
_add_scrape_route("/prometheus/metrics/all", METRICS.all_registry, "Every metric family", "all_metrics")
for _category in Category:
    _add_scrape_route(
        f"/prometheus/metrics/{_category.value}",
        METRICS.category_registries[_category],
        f"The {_category.value} families only",
        f"{_category.value}_metrics",
    )
