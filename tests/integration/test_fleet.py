"""Three instances side by side, one Prometheus (and one VictoriaMetrics) scraping all
three every second: the summary from any instance reports the fleet's totals."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.catalogue import Category
from app.settings import Settings
from app.summary.service import SummaryService, backend_from_settings
from app.telemetry import Telemetry
from tests.support.instance import PROVIDERS, expected_calls
from tests.support.servers import (
    MetricsServer,
    ServiceProcess,
    start_prometheus,
    start_service,
    start_victoriametrics,
)

INSTANCES = 3
JOB = "gateway-metrics"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MetricsServer, MetricsServer, list[ServiceProcess]]]:
    tmp = tmp_path_factory.mktemp("fleet")
    prometheus = start_prometheus(tmp, targets=[], job=JOB)
    victoria = start_victoriametrics(tmp, targets=[], job=JOB)
    env = {
        "GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
        "GATEWAY_METRICS_PROMETHEUS_JOB": JOB,
        "GATEWAY_METRICS_ACCESS_LOG": "false",
    }
    instances: list[ServiceProcess] = []
    try:
        instances = [start_service(tmp, index, env) for index in range(INSTANCES)]
        targets = [instance.address for instance in instances]
        prometheus.set_targets(targets)
        victoria.set_targets(targets)
        for backend in (prometheus, victoria):
            backend.wait_until(
                lambda b=backend: _value(b, f'sum(model_inference_requests_total{{job="{JOB}"}})')
                == sum(expected_calls(INSTANCES, p) for p in PROVIDERS),
                timeout=45,
            )
        yield prometheus, victoria, instances
    finally:
        for instance in instances:
            instance.stop()
        prometheus.close()
        victoria.close()


def _value(backend: MetricsServer, expr: str) -> float | None:
    result = backend.query(expr)["result"]
    return float(result[0]["value"][1]) if result else None


def _summary(url: str, *categories: str) -> dict:
    response = httpx.get(f"{url}/prometheus/metrics/summary", params=[("category", c) for c in categories],
                         timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def _models(summary: dict) -> dict[str, float]:
    return {m["provider"]: m["requests_total"] for m in summary["metrics"]["models"]["models"]}


@pytest.mark.parametrize("index", range(INSTANCES))
def test_each_instance_reports_fleet_totals(fleet: tuple, index: int) -> None:
    _, _, instances = fleet
    summary = _summary(instances[index].url, "models", "business")
    assert summary["source"] == "prometheus"
    assert summary["errors"] == []
    assert _models(summary) == {p: expected_calls(INSTANCES, p) for p in PROVIDERS}
    business = summary["metrics"]["business"]
    successes = sum(expected_calls(INSTANCES, p) for p in PROVIDERS) - expected_calls(INSTANCES, "beta") // 10
    assert business["total_tokens_used"] == successes * 140
    assert business["total_credits_used"] == pytest.approx(successes * 0.5)
    # Shared business state is the same on every replica: the fleet figure is not 3 x 42.
    assert business["active_api_keys"] == 42


def test_local_source_is_the_instance_alone(fleet: tuple) -> None:
    _, _, instances = fleet
    response = httpx.get(f"{instances[1].url}/prometheus/metrics/summary",
                         params={"category": "models", "source": "local"}, trust_env=False)
    summary = response.json()
    assert summary["source"] == "local"
    assert _models(summary) == {p: 200 for p in PROVIDERS}


def test_victoriametrics_backend_gives_the_same_totals(fleet: tuple) -> None:
    _, victoria, _ = fleet
    settings = Settings(prometheus_url=victoria.url, prometheus_job=JOB, access_log=False)
    telemetry = Telemetry(settings)
    service = SummaryService(settings, telemetry.snapshots, backend_from_settings(settings),
                             tracker=telemetry.tracker, top_lists=telemetry.top_lists)
    try:
        summary = service.summary([Category.MODELS, Category.BUSINESS])
    finally:
        service.close()
    assert summary.source == "prometheus"
    assert summary.errors == []
    totals = {m.provider: m.requests_total for m in summary.metrics.models.models}
    assert totals == {p: expected_calls(INSTANCES, p) for p in PROVIDERS}
    assert summary.metrics.business.active_api_keys == 42


def test_ready_reports_the_backend(fleet: tuple) -> None:
    _, _, instances = fleet
    ready = httpx.get(f"{instances[0].url}/ready", trust_env=False).json()
    assert ready["status"] == "ready"
    assert ready["backend"]["configured"] is True
    assert ready["backend"]["reachable"] is True


def test_every_summary_query_parses_on_both_backends(fleet: tuple) -> None:
    from app.summary.promql import queries_for

    prometheus, victoria, _ = fleet
    for backend in (prometheus, victoria):
        for query in queries_for(list(Category)):
            backend.query(query.promql(60))  # raises QueryError on a parse or execution error


