"""Fleet mode: the health score computed from PromQL over every replica matches the
local tracker's formula on the same traffic."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import MetricsServer, ServiceProcess, start_prometheus, start_service

JOB = "gateway-metrics"
#: beta: every tenth call a 503 (unreached, failed, frustrated); the rest satisfied.
BETA_SCORE = 0.4 * 0.9 + 0.3 * (1 - 0.1) + 0.3 * 0.9


@pytest.fixture(scope="module")
def steady_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsServer, list[ServiceProcess]]]:
    tmp = tmp_path_factory.mktemp("fleet-health")
    prometheus = start_prometheus(tmp, targets=[], job=JOB)
    env = {"GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url, "GATEWAY_METRICS_PROMETHEUS_JOB": JOB,
           "GATEWAY_METRICS_ACCESS_LOG": "false", "GATEWAY_METRICS_QUERY_CACHE_SECONDS": "0"}
    instances: list[ServiceProcess] = []
    try:
        instances = [start_service(tmp, index, env, steady=True) for index in range(2)]
        prometheus.set_targets([instance.address for instance in instances])
        # rate() over the window needs scrapes of each replica with traffic between, and
        # enough of them (15 s at 1 s scrapes, some 600 calls of beta) that a 503 more or
        # less in the window moves beta's score by a small part of the tolerance: with two
        # scrapes a second apart (some 40 calls) it moves it by 0.025, more than all of it.
        prometheus.wait_until(
            lambda: len(prometheus.query(
                f'count_over_time(gatewayz_provider_apdex_total{{job="{JOB}"}}[1m]) >= 15')["result"]) >= 4,
            timeout=60,
        )
        yield prometheus, instances
    finally:
        for instance in instances:
            instance.stop()
        prometheus.close()


def _health(instance: ServiceProcess, source: str) -> dict[str, dict]:
    report = httpx.get(f"{instance.url}/prometheus/metrics/health", params={"source": source},
                       trust_env=False, timeout=10).json()
    assert report["source"] == source and report["errors"] == []
    return {p["provider"]: p for p in report["providers"]}


def test_fleet_score_matches_the_local_formula(steady_fleet: tuple) -> None:
    _, instances = steady_fleet
    fleet = _health(instances[0], "fleet")
    local = _health(instances[0], "local")
    for provider, expected in (("alpha", 1.0), ("beta", BETA_SCORE)):
        # Both count whole calls over slightly different spans: a tenth of a call apart.
        assert local[provider]["score"] == pytest.approx(expected, abs=0.02), provider
        assert fleet[provider]["score"] == pytest.approx(local[provider]["score"], abs=0.02), provider
    assert fleet["beta"]["state"] == local["beta"]["state"] == "healthy"


def test_every_replica_gets_the_same_fleet_order(steady_fleet: tuple) -> None:
    _, instances = steady_fleet
    orders = [
        httpx.get(f"{i.url}/prometheus/metrics/health", params={"source": "fleet"},
                  trust_env=False).json()["failover_order"]
        for i in instances
    ]
    assert orders[0] == orders[1] == ["alpha", "beta"]


def test_prometheus_summary_shows_fleet_health(steady_fleet: tuple) -> None:
    _, instances = steady_fleet
    summary = httpx.get(f"{instances[1].url}/prometheus/metrics/summary", params={"category": "providers"},
                        trust_env=False, timeout=10).json()
    assert summary["source"] == "prometheus"
    scores = {p["provider"]: p["health_score"] for p in summary["metrics"]["providers"]["providers"]}
    assert scores["beta"] == pytest.approx(BETA_SCORE, abs=0.02)
