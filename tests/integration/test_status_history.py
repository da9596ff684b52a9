"""``GET /prometheus/metrics/trends`` from a real Prometheus: its packed range query runs,
and every point is the figure an independent PromQL query gives at that instant.

One Prometheus for the module, scraping one served app every second while the test sends
it requests and upstream calls. The local history and the fallbacks are tested in
tests/routers/test_status.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry
from tests.support.servers import AppServer, MetricsServer, poll, serve_app, start_prometheus

JOB = "gateway-metrics"
TRENDS = "/prometheus/metrics/trends"
PROVIDER = "historycloud"
#: Points one second apart over the last minute: Prometheus scrapes every second.
PARAMS = {"span_seconds": 60, "step_seconds": 1}


def trends(app: AppServer, **params: object) -> dict:
    response = httpx.get(app.url + TRENDS, params={**PARAMS, **params}, trust_env=False, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def points_with_rates(answer: dict) -> int:
    return sum(value is not None for value in answer["requests_per_second"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsServer, AppServer]]:
    with start_prometheus(tmp_path_factory.mktemp("status-history"), targets=[], job=JOB) as prometheus:
        settings = Settings(prometheus_url=prometheus.url, prometheus_job=JOB, query_cache_seconds=0,
                            access_log=False)
        telemetry = Telemetry(settings)
        with serve_app(lambda: create_app(settings, telemetry)) as app, \
                httpx.Client(base_url=app.url, trust_env=False, timeout=10) as client:
            prometheus.set_targets([app.address])

            def traffic() -> int:
                for _ in range(5):
                    client.get("/health")
                telemetry.record_upstream_call(PROVIDER, "m1", duration_s=0.3)
                return points_with_rates(trends(app))

            # Traffic between scrapes until the range query holds a few seconds of rates.
            poll(lambda: traffic() >= 4, 60, "four points of history with a rate")
            yield prometheus, app


def instant(prometheus: MetricsServer, expr: str, at: float) -> dict[str, float]:
    """An instant query at ``at``: value by provider label ("" when none), NaN left out."""
    result = prometheus.query(expr, time=f"{at:.3f}")["result"]
    values = {series["metric"].get("provider", ""): float(series["value"][1]) for series in result}
    return {key: value for key, value in values.items() if not math.isnan(value)}


def test_trends_come_from_the_backends_range_query(served: tuple[MetricsServer, AppServer]) -> None:
    _, app = served
    answer = trends(app)
    assert answer["source"] == "prometheus" and answer["errors"] == [] and answer["note"] is None
    assert answer["step_seconds"] == 1 and answer["window_seconds"] == 300
    times = answer["times"]
    assert times == sorted(times) and all(t == int(t) for t in times)  # a grid of whole steps
    assert len(times) <= 61
    assert points_with_rates(answer) >= 4
    assert any(value is not None for value in answer["p95_ms"])
    assert PROVIDER in answer["health_scores"]


@pytest.mark.parametrize("window", [300, 60])
def test_every_point_is_what_promql_says_at_that_instant(served: tuple[MetricsServer, AppServer],
                                                         window: int) -> None:
    prometheus, app = served
    answer = trends(app, window_seconds=window)
    selector = f'{{job="{JOB}"}}'
    checked = 0
    for index, at in enumerate(answer["times"]):
        rate = instant(prometheus, f"sum(rate(http_requests_total{selector}[{window}s]))", at)
        p95 = instant(prometheus, f"histogram_quantile(0.95, sum by (le) "
                                  f"(rate(http_request_duration_seconds_bucket{selector}[{window}s])))", at)
        scores = instant(prometheus, f"gatewayz_provider_health_score{selector}", at)
        # Milliseconds come rounded to 3 decimals, as in the summary.
        assert answer["requests_per_second"][index] == pytest.approx(rate.get(""), rel=1e-9)
        expected_p95 = p95.get("")
        assert answer["p95_ms"][index] == (None if expected_p95 is None
                                           else pytest.approx(expected_p95 * 1000, abs=1e-3))
        for provider, values in answer["health_scores"].items():
            assert values[index] == (pytest.approx(scores[provider]) if provider in scores else None)
        checked += answer["requests_per_second"][index] is not None
    assert checked >= 4


def test_source_local_reads_this_instances_history(served: tuple[MetricsServer, AppServer]) -> None:
    _, app = served
    answer = trends(app, source="local", step_seconds=5)
    assert answer["source"] == "local" and answer["errors"] == []
    assert answer["times"]  # the snapshot the lifespan took, at least
