"""Fleet figures from a real Prometheus that scrapes one instance through three jobs
(``/metrics`` and two category endpoints, as the SPEC's own scrape config does): every
series is counted once, an open circuit reads as open, and the error rate is the same
figure in the summary (both sources), ``/health`` and ``provider_error_rate``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.scoring import HealthConfig, HealthTracker
from app.settings import Settings
from app.telemetry import Telemetry
from tests.support.servers import AppServer, MetricsServer, serve_app, start_prometheus

MIXED = "fleet-mixed"  # 4 x 200, 5 x 429, 1 x 400 per batch: no errors at all
BROKEN = "fleet-broken"  # 500s in a row: its circuit opens
BATCHES = 2
WINDOW_S = 60


def record_mixed_batch(telemetry: Telemetry) -> None:
    for status in (200,) * 4 + (429,) * 5 + (400,):
        telemetry.record_upstream_call(MIXED, "m1", duration_s=0.2, status_code=status)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsServer, AppServer]]:
    tmp = tmp_path_factory.mktemp("fleet-figures")
    with start_prometheus(tmp, targets=[]) as prometheus:
        settings = Settings(prometheus_url=prometheus.url, query_cache_seconds=0, access_log=False)
        # The broken provider's circuit must stay open while Prometheus scrapes it (by
        # default it goes half-open after 5 s): the app's own tracker, with a long cooldown.
        tracker = HealthTracker(HealthConfig(open_cooldown_s=600.0, max_cooldown_s=600.0))
        telemetry = Telemetry(settings, tracker=tracker)
        with serve_app(lambda: create_app(settings, telemetry)) as app:
            prometheus.set_targets([
                {"job": job, "targets": [app.address], "metrics_path": path}
                for job, path in (("gateway-metrics", "/metrics"),
                                  ("gateway-providers", "/prometheus/metrics/providers"),
                                  ("gateway-models", "/prometheus/metrics/models"))
            ])
            for _ in range(10):
                telemetry.record_upstream_call(BROKEN, "m1", duration_s=0.2, status_code=500)
            # rate() needs a series seen before its increase: a batch, a scrape, a batch, a scrape.
            for batch in range(1, BATCHES + 1):
                record_mixed_batch(telemetry)
                prometheus.wait_until(
                    f'count(model_inference_requests_total{{provider="{MIXED}",status="success"}} == {4 * batch}) == 2'
                    f' and on () count(gatewayz_provider_circuit_state{{provider="{BROKEN}"}} == 1) == 2',
                    timeout=30,
                )
            yield prometheus, app


def get(app: AppServer, path: str, **params: object) -> dict:
    response = httpx.get(app.url + path, params=params, trust_env=False, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def summary_of(app: AppServer, source: str) -> dict:
    summary = get(app, "/prometheus/metrics/summary", category=["providers", "models"], window_seconds=WINDOW_S,
                  source="local" if source == "local" else "auto")
    assert summary["source"] == source and summary["errors"] == []
    return summary


def test_the_instance_is_scraped_twice_per_family(served: tuple[MetricsServer, AppServer]) -> None:
    prometheus, _ = served
    jobs = prometheus.query(f'count by (job) (model_inference_requests_total{{provider="{MIXED}"}})')["result"]
    assert {series["metric"]["job"] for series in jobs} == {"gateway-metrics", "gateway-models"}


def test_summary_totals_count_the_instance_once(served: tuple[MetricsServer, AppServer]) -> None:
    prometheus, app = served
    # The rate over the window sees one batch's increase (10: the first batch is the series'
    # first sample), over WINDOW_S. Prometheus extrapolates it by at most ~1.6 scrape
    # intervals beyond the sampled ones: with 10 samples in the window, by less than 20%.
    # Counted twice (two jobs), it would be at least twice the increase.
    prometheus.wait_until(f'count_over_time(model_inference_requests_total{{provider="{MIXED}",status="success",'
                          f'job="gateway-metrics"}}[{WINDOW_S}s]) >= 10', timeout=30)
    models = {m["provider"]: m for m in summary_of(app, "prometheus")["metrics"]["models"]["models"]}
    assert models[MIXED]["requests_total"] == 10 * BATCHES
    increase_per_second = 10 / WINDOW_S
    assert increase_per_second * (1 - 1e-9) <= models[MIXED]["requests_per_second"] <= increase_per_second * 1.2


def test_open_circuit_reads_as_open_in_fleet_health(served: tuple[MetricsServer, AppServer]) -> None:
    _, app = served
    report = get(app, "/prometheus/metrics/health", source="fleet")
    assert report["errors"] == []
    broken = next(p for p in report["providers"] if p["provider"] == BROKEN)
    assert broken["circuit"] == "open"
    assert broken["state"] == "unavailable"


def test_error_rate_is_one_figure_everywhere(served: tuple[MetricsServer, AppServer]) -> None:
    prometheus, app = served
    figures: dict[str, float | None] = {}
    for source in ("prometheus", "local"):
        summary = summary_of(app, source)
        provider = next(p for p in summary["metrics"]["providers"]["providers"] if p["provider"] == MIXED)
        model = next(m for m in summary["metrics"]["models"]["models"] if m["provider"] == MIXED)
        figures[f"summary {source}"] = provider["error_rate"]
        figures[f"summary {source} model"] = model["error_rate"]
        assert provider["throttled_share"] == pytest.approx(0.5)
        assert provider["client_error_share"] == pytest.approx(0.1)
    for source in ("local", "fleet"):
        health = get(app, "/prometheus/metrics/health", source=source)
        figures[f"/health {source}"] = next(p for p in health["providers"] if p["provider"] == MIXED)["error_rate"]
    exposed = httpx.get(app.url + "/prometheus/metrics/providers", trust_env=False).text
    figures["provider_error_rate"] = next(
        sample.value
        for family in text_string_to_metric_families(exposed)
        for sample in family.samples
        if sample.name == "provider_error_rate" and sample.labels == {"provider": MIXED}
    )
    assert figures == dict.fromkeys(figures, 0.0)
