"""Under steady demo traffic, the Prometheus source and the local source agree.

Both compute the same queries over the same 30 s window of the same counters: the local
source from the instance's registry snapshots (every second), Prometheus from its
scrapes (every second). They differ only by where the window's edges fall (up to about a
second of 30, so about 3% on a steady rate) and by Prometheus' extrapolation of rate()
to the window's edges, hence the 5% tolerance. Shares and percentiles are ratios of the
same counts, so they agree more closely than that.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import MetricsServer, ServiceProcess, start_prometheus, start_service

WINDOW_S = 30
TOLERANCE = 0.05
#: Requests/s below which the demo traffic is not flowing (it is configured for 200).
MIN_RATE = 20
JOB = "gateway-metrics"


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsServer, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("accuracy")
    prometheus = start_prometheus(tmp, targets=[], job=JOB)
    instance = None
    try:
        instance = start_service(tmp, 0, {
            "GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
            "GATEWAY_METRICS_PROMETHEUS_JOB": JOB,
            "GATEWAY_METRICS_DEMO": "true",
            "GATEWAY_METRICS_DEMO_RATE": "200",
            "GATEWAY_METRICS_SNAPSHOT_INTERVAL_SECONDS": "1",
            "GATEWAY_METRICS_QUERY_CACHE_SECONDS": "0",
            "GATEWAY_METRICS_ACCESS_LOG": "false",
        })
        prometheus.set_targets([instance.address])
        # Enough scrapes to cover the window and a few seconds more.
        prometheus.wait_until(
            lambda: _count(prometheus, f'count_over_time(up{{job="{JOB}"}}[{WINDOW_S + 30}s])') >= WINDOW_S + 4,
            timeout=WINDOW_S + 40,
        )
        yield prometheus, instance
    finally:
        if instance is not None:
            instance.stop()
        prometheus.close()


def _count(prometheus: MetricsServer, expr: str) -> float:
    result = prometheus.query(expr)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _both(instance: ServiceProcess) -> tuple[dict, dict]:
    params = {"window_seconds": WINDOW_S}
    with httpx.Client(trust_env=False, timeout=10) as http:
        remote = http.get(f"{instance.url}/prometheus/metrics/summary", params=params).json()
        local = http.get(f"{instance.url}/prometheus/metrics/summary", params={**params, "source": "local"}).json()
    assert remote["source"] == "prometheus" and remote["errors"] == []
    assert local["source"] == "local"
    return remote["metrics"], local["metrics"]


def close(remote: float | None, local: float | None) -> bool:
    assert remote is not None and local is not None
    return abs(remote - local) <= TOLERANCE * max(abs(remote), abs(local))


def test_request_rates_agree(steady: tuple) -> None:
    remote, local = _both(steady[1])
    # The demo asks for 200 calls/s, but a loaded machine serves fewer: what the test is
    # about is that both sources measure the same traffic, whatever rate it reached. The
    # floor only says the demo traffic is there (a scrape a second alone gives 1/s), so the
    # comparison is not between two near-zero rates.
    remote_rate = remote["performance"]["requests_per_second"]
    local_rate = local["performance"]["requests_per_second"]
    assert remote_rate > MIN_RATE and local_rate > MIN_RATE, (remote_rate, local_rate)
    assert close(remote_rate, local_rate)
    remote_total = sum(p["requests_per_second"] or 0 for p in remote["providers"]["providers"])
    local_total = sum(p["requests_per_second"] or 0 for p in local["providers"]["providers"])
    assert remote_total > 0 and close(remote_total, local_total)


def test_percentiles_and_ratios_agree(steady: tuple) -> None:
    remote, local = _both(steady[1])
    for field in ("inference_p50_ms", "inference_p95_ms", "p50_ms", "cache_hit_rate", "tpot_p95_ms"):
        assert close(remote["performance"][field], local["performance"][field]), field
    assert close(remote["providers"]["avg_response_time_ms"], local["providers"]["avg_response_time_ms"])


def test_totals_agree(steady: tuple) -> None:
    remote, local = _both(steady[1])
    # Counter totals: Prometheus holds the value of its last scrape, at most a second old.
    assert close(remote["business"]["total_tokens_used"], local["business"]["total_tokens_used"])
