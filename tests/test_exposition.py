"""Format negotiation, gzip and the name[] filter of the scrape endpoints."""

from __future__ import annotations

import gzip
import io

import pytest
from fastapi.testclient import TestClient

from app.exposition import accepts_gzip
from app.metrics import record_cache_hit, set_queue_size


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, False), ("", False), ("gzip", True), ("br, gzip;q=0.8", True), ("gzip;q=0", False),
     ("identity", False), ("*", True), ("GZIP", True), ("gzip;q=bogus", True)],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_gzip_when_allowed(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "# TYPE http_requests_total counter" in response.text  # httpx decoded it


def test_plain_when_gzip_not_allowed(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in response.headers
    assert response.content.startswith(b"# HELP")


def test_gzip_body_is_valid_gzip(client: TestClient) -> None:
    with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw).startswith(b"# HELP")


def test_prometheus_scrape_accept_header_gets_openmetrics(client: TestClient) -> None:
    # What Prometheus 2.42 sends when scraping.
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")


def test_name_filter_restricts_families(client: TestClient) -> None:
    # A labelled family is only exposed once it has a series: record one of each.
    record_cache_hit("name-filter-test")
    set_queue_size("name-filter-test", 3)
    response = client.get("/metrics", params={"name[]": ["cache_hits_total", "queue_size"]})
    types = [line for line in response.text.splitlines() if line.startswith("# TYPE")]
    assert sorted(types) == ["# TYPE cache_hits_total counter", "# TYPE queue_size gauge"]


def test_vary_header_is_set(client: TestClient) -> None:
    assert client.get("/prometheus/metrics/models").headers["vary"] == "Accept, Accept-Encoding"


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/metrics", "/prometheus/metrics/all", "/prometheus/metrics/system", "/health", "/ready"]:
        assert path in paths


def test_openmetrics_body_parses_and_ends_with_eof(client: TestClient) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    record_cache_hit("openmetrics-test")
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.text.endswith("# EOF\n")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "cache_hits" in names


def test_name_filter_keeps_only_the_wanted_samples_of_a_family(client: TestClient) -> None:
    client.get("/health")  # one request: http_request_duration_seconds has a series
    response = client.get("/metrics", params={"name[]": ["http_request_duration_seconds_count"]})
    samples = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    assert samples and all(line.startswith("http_request_duration_seconds_count{") for line in samples)


def test_gzipped_chunks_are_one_gzip_member_of_the_joined_body() -> None:
    from app.exposition import gzipped

    chunks = [b"", b"# HELP a x\n# TYPE a gauge\n", b'a{b="c"} 1.0\n' * 20_000, b"", b"z 2.0\n"]
    body = gzipped(chunks)
    assert gzip.decompress(body) == b"".join(chunks)
    assert body[:2] == b"\x1f\x8b" and gzip.GzipFile(fileobj=io.BytesIO(body)).read() == b"".join(chunks)
