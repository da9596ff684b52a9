"""GET /prometheus/metrics/docs."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_docs_route_serves_the_promql_guide(client: TestClient) -> None:
    response = client.get("/prometheus/metrics/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert response.text.startswith("# PromQL guide")
