"""Two real uvicorn workers in multiprocess mode (``gateway-metrics --workers 2``).

Every scrape, whichever process answers it, reports both workers' totals exactly; a worker
killed with SIGKILL and replaced loses no count, and no counter goes backwards. A supervisor
killed with SIGKILL takes its workers, exporter and resource tracker with it within seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import poll
from tests.support.workers import (
    STALE_FILE,
    Workers,
    check_sigkill_to_the_supervisor_stops_everything,
    check_totals_survive_a_killed_worker,
    health_requests,
    samples,
)


def console_script(port: int, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    return ([sys.executable, "-m", "app.cli", "--workers", "2", "--port", str(port),
             "--metrics-port", str(metrics_port), "--log-level", "warning"], {})


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    handle = Workers(tmp_path_factory.mktemp("workers"), console_script)
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


def test_directory_is_emptied_by_its_owner_before_the_workers_start(workers: Workers) -> None:
    assert not (workers.directory / STALE_FILE).exists()


def test_totals_are_exact_across_workers_and_survive_a_killed_worker(workers: Workers) -> None:
    check_totals_survive_a_killed_worker(workers)


def test_in_flight_is_the_live_sum_and_idle_routes_show_zero(workers: Workers) -> None:
    workers.send(20)

    def idle() -> bool:
        in_flight = samples(workers.http.get(workers.exporter_url + "/metrics").text, "http_requests_in_flight")
        return in_flight.get((("endpoint", "/health"), ("method", "GET"))) == 0

    poll(idle, 10, "in-flight back to 0 for /health")


def test_category_endpoint_of_the_exporter_holds_only_its_families(workers: Workers) -> None:
    text = workers.http.get(workers.exporter_url + "/prometheus/metrics/models").text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "http_requests" not in names
    before = health_requests(workers.http.get(workers.exporter_url + "/metrics").text)
    workers.send(5)
    # Exactly the 5 sent since: only this test sends requests now, and the exporter's own
    # scrapes are counted by no worker. Polled, as a worker counts a request as it ends.
    poll(lambda: health_requests(workers.http.get(workers.exporter_url + "/prometheus/metrics/system").text)
         == before + 5, 10, "the system category counting the 5 requests to /health, no more, no fewer")


def test_reader_sums_exactly_as_client_python_does(workers: Workers) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from app.multiprocess import FilesCollector

    workers.send(20)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ours.register(FilesCollector(str(workers.directory)))
    MultiProcessCollector(theirs, str(workers.directory))
    assert sorted(generate_latest(ours).splitlines()) == sorted(generate_latest(theirs).splitlines())


def test_sigkill_to_the_supervisor_stops_the_workers_and_frees_the_port(tmp_path: Path) -> None:
    """uvicorn's supervisor cannot stop its workers when killed with SIGKILL: each worker
    follows it (GATEWAY_METRICS_SUPERVISOR_PID), so a restarted supervisor can bind the port."""
    workers = Workers(tmp_path, console_script)
    try:
        check_sigkill_to_the_supervisor_stops_everything(workers)
    finally:
        workers.stop()
