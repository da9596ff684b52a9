"""Nothing lost under load: a known number of gateway calls, sent from another process
through two uvicorn workers while a real Prometheus scrapes the exporter every second and
summaries are read concurrently, all show up exactly, in the exporter and in Prometheus."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.load import INPUT_TOKENS, OUTPUT_TOKENS, PROVIDER, ROUTE, Gateway, run_load
from tests.support.servers import LOOPBACK, PrometheusServer, free_port, start_prometheus

REQUESTS = 1500
CONCURRENCY = 16
LOAD_TIME_LIMIT_S = 60.0
#: Summary readers run until the load ends, and never more than this many reads each.
SUMMARY_READS = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, PrometheusServer]]:
    tmp = tmp_path_factory.mktemp("load")
    metrics_port = free_port()
    with start_prometheus(tmp, [f"{LOOPBACK}:{metrics_port}"]) as prometheus:
        gateway = Gateway(tmp, workers=2, metrics_port=metrics_port,
                          env={"GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
                               "GATEWAY_METRICS_QUERY_CACHE_SECONDS": "0"})
        try:
            gateway.wait_ready()
            prometheus.wait_until('up{job="gateway-metrics"} == 1', timeout=30)
            yield gateway, prometheus
        finally:
            gateway.stop()


def exported(text: str) -> dict[str, float]:
    """The route's counters, summed over labels other than the ones that matter here."""
    totals = {"requests": 0.0, "inference": 0.0, "input": 0.0, "output": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "http_requests_total" and s.labels.get("endpoint") == ROUTE:
                totals["requests"] += s.value
            elif s.name == "model_inference_requests_total" and s.labels.get("provider") == PROVIDER:
                totals["inference"] += s.value
            elif s.name == "tokens_used_total" and s.labels.get("provider") == PROVIDER:
                totals[s.labels["token_type"]] += s.value
    return totals


PROMQL = {
    "requests": f'sum(http_requests_total{{endpoint="{ROUTE}"}})',
    "inference": f'sum(model_inference_requests_total{{provider="{PROVIDER}"}})',
    "input": f'sum(tokens_used_total{{provider="{PROVIDER}",token_type="input"}})',
    "output": f'sum(tokens_used_total{{provider="{PROVIDER}",token_type="output"}})',
}


def in_prometheus(prometheus: PrometheusServer) -> dict[str, float]:
    values = {}
    for name, expr in PROMQL.items():
        result = prometheus.query(expr)["result"]
        values[name] = float(result[0]["value"][1]) if result else 0.0
    return values


def test_every_call_is_counted_exactly_by_the_exporter_and_prometheus(stack: tuple[Gateway, PrometheusServer]) -> None:
    gateway, prometheus = stack
    done = threading.Event()
    answers: list[tuple[int, str]] = []

    def read_summaries() -> None:
        with httpx.Client(timeout=30.0, trust_env=False) as client:
            for _ in range(SUMMARY_READS):
                if done.is_set():
                    return
                response = client.get(gateway.url + "/prometheus/metrics/summary")
                source = response.json()["source"] if response.status_code == 200 else ""
                answers.append((response.status_code, source))

    readers = [threading.Thread(target=read_summaries) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        load = run_load(gateway.url, REQUESTS, CONCURRENCY, LOAD_TIME_LIMIT_S)
    finally:
        done.set()
        for reader in readers:
            reader.join(60)
    print(f"{load.sent} calls in {load.seconds:.1f} s: {load.per_second:.0f}/s, p50 {load.p50_ms:.1f} ms, "
          f"p99 {load.p99_ms:.1f} ms; {len(answers)} summaries")
    assert load.failed == {} and load.sent == REQUESTS
    # Both workers served part of the load: the totals below are sums over processes.
    assert len(gateway.worker_pids()) == 2
    assert answers and {status for status, _ in answers} == {200}
    assert {source for _, source in answers} == {"prometheus"}

    expected = {"requests": REQUESTS, "inference": REQUESTS,
                "input": REQUESTS * INPUT_TOKENS, "output": REQUESTS * OUTPUT_TOKENS}
    assert exported(httpx.get(gateway.exporter_url + "/metrics", timeout=30, trust_env=False).text) == expected
    # Prometheus has it after its next scrapes, and two scrapes later still exactly that.
    prometheus.wait_until(lambda: in_prometheus(prometheus) == expected or None, timeout=20)
    scrapes = scrapes_so_far(prometheus)
    prometheus.wait_until(lambda: scrapes_so_far(prometheus) >= scrapes + 2, timeout=20)
    assert in_prometheus(prometheus) == expected


def scrapes_so_far(prometheus: PrometheusServer) -> float:
    result = prometheus.query('count_over_time(up{job="gateway-metrics"}[1h])')["result"]
    return float(result[0]["value"][1]) if result else 0.0
