"""deploy/prometheus/examples/categories.yml scrapes the category endpoints, each at its
own pace, and still delivers every family exactly once (families shared by two
categories are dropped from one job), so the rules' sums count nothing twice."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.prometheus_config import scrape_jobs
from tests.deploy.sources import PROMETHEUS_DIR
from tests.support.servers import MetricsServer, ServiceProcess, start_prometheus

CONFIG = PROMETHEUS_DIR / "examples" / "categories.yml"
JOBS = 'job=~"gateway-metrics-.+"'


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, demo_service: ServiceProcess) -> Iterator[MetricsServer]:
    tmp = tmp_path_factory.mktemp("categories")
    with start_prometheus(tmp, scrape_jobs(CONFIG, demo_service.address)) as server:
        server.wait_until(f"count(up{{{JOBS}}} == 1) == 5")
        yield server


def sample_names_of_metrics(service: ServiceProcess) -> set[str]:
    text = httpx.get(service.url + "/metrics", timeout=5).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples
            if not sample.name.endswith("_created")}


def test_every_series_comes_from_one_job(prometheus: MetricsServer) -> None:
    # up and scrape_* are Prometheus' own series about each job.
    own = '__name__!~"up|scrape_.+"'
    jobs_per_name = prometheus.query(f"count by (__name__) (count by (__name__, job) ({{{JOBS}, {own}}}))")["result"]
    assert jobs_per_name
    twice = {series["metric"]["__name__"]: series["value"][1] for series in jobs_per_name
             if series["value"][1] != "1"}
    assert twice == {}


def test_the_category_jobs_deliver_everything_metrics_has(prometheus: MetricsServer,
                                                          demo_service: ServiceProcess) -> None:
    expected = sample_names_of_metrics(demo_service)

    def scraped() -> set[str]:
        found = prometheus.query(f"count by (__name__) ({{{JOBS}}})")["result"]
        return {series["metric"]["__name__"] for series in found}

    prometheus.wait_until(lambda: expected <= scraped())
