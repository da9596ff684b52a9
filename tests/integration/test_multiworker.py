"""Two real uvicorn workers in multiprocess mode (``gateway-metrics --workers 2``).

Every scrape, whichever process answers it, reports both workers' totals exactly; a worker
killed with SIGKILL and replaced loses no count, and no counter goes backwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import LOOPBACK, free_port, poll

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0  # generous: a loaded 2-core machine starts a worker in seconds


class Workers:
    def __init__(self, tmp_dir: Path) -> None:
        self.directory = tmp_dir / "multiproc"
        self.directory.mkdir()
        (self.directory / "counter_999999.db").write_bytes(b"left by an earlier run")
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.exporter_url = f"http://{LOOPBACK}:{self.metrics_port}"
        self.log = (tmp_dir / "workers.log").open("wb")
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory),
               "GATEWAY_METRICS_ACCESS_LOG": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--workers", "2", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        self.http = httpx.Client(timeout=10.0, trust_env=False)

    def wait_ready(self) -> None:
        poll(lambda: self.process.poll() is not None or self.http.get(self.url + "/health").status_code == 200,
             START_TIMEOUT_S, "the workers")
        poll(lambda: self.process.poll() is not None or self.http.get(self.exporter_url + "/metrics").status_code == 200,
             START_TIMEOUT_S, "the exporter")
        assert self.process.poll() is None, "the console script exited"

    def send(self, count: int) -> None:
        """``count`` requests to /health, each on a connection of its own, between which
        slower scrapes of the worker's own /metrics keep one worker busy while the other
        accepts: the kernel would otherwise give every connection to the quickest worker."""
        paths = ["/health"] * count
        for index in range(3, count + count // 3, 4):
            paths.insert(index, "/prometheus/metrics/all")

        def one(path: str) -> int:
            with httpx.Client(timeout=30.0, trust_env=False) as client:
                return client.get(self.url + path).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, paths)) == {200}
        assert paths.count("/health") == count

    def worker_processes(self) -> set[int]:
        """The supervisor's worker processes (the exporter is its other child)."""
        pids: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"app.exporter" not in cmdline:
                    pids.add(int(pid))
        return pids

    def worker_pids(self) -> set[int]:
        """Processes that have recorded requests in the directory."""
        return {int(path.stem.split("_")[-1]) for path in self.directory.glob("counter_*.db")}

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def health_requests(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            return sum(s.value for s in family.samples
                       if s.name == "http_requests_total" and s.labels["endpoint"] == "/health")
    return 0.0


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    handle = Workers(tmp_path_factory.mktemp("workers"))
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


def test_directory_is_emptied_by_its_owner_before_the_workers_start(workers: Workers) -> None:
    assert not (workers.directory / "counter_999999.db").exists()


def test_totals_are_exact_across_workers_and_survive_a_killed_worker(workers: Workers) -> None:
    sent = health_requests(workers.http.get(workers.exporter_url + "/metrics").text)
    seen = [sent]

    def send_until(done: Callable[[], bool], what: str) -> None:
        def step() -> bool:
            nonlocal sent
            workers.send(20)
            sent += 20
            seen.append(health_requests(workers.http.get(workers.exporter_url + "/metrics").text))
            return done()

        poll(step, START_TIMEOUT_S, what)

    # A worker may still be starting: send until both have served requests.
    send_until(lambda: len(workers.worker_pids()) == 2, "both workers serving requests")
    first_pids = workers.worker_pids()
    workers.send(100)
    sent += 100
    seen.append(health_requests(workers.http.get(workers.exporter_url + "/metrics").text))
    assert seen[-1] == sent
    # Any worker's own endpoints report both workers too.
    for path in ("/metrics", "/prometheus/metrics/system"):
        assert health_requests(workers.http.get(workers.url + path).text) == sent

    victim = min(first_pids)
    os.kill(victim, signal.SIGKILL)
    poll(lambda: len(workers.worker_processes() - first_pids) == 1, START_TIMEOUT_S, "a replacement process")
    # The supervisor replaces it; keep sending until the new worker has served requests.
    send_until(lambda: len(workers.worker_pids() - first_pids) == 1, "a replacement worker serving requests")
    workers.send(100)
    sent += 100
    final = workers.http.get(workers.exporter_url + "/metrics").text
    seen.append(health_requests(final))
    assert seen[-1] == sent
    assert seen == sorted(seen), "a counter went backwards"
    histogram_count = samples(final, "http_request_duration_seconds_count")
    assert histogram_count[(("endpoint", "/health"), ("method", "GET"))] == sent
    # The dead worker's live gauges (in flight) are gone; its counters stay in the totals.
    assert not list(workers.directory.glob(f"gauge_live*_{victim}.db"))
    assert (workers.directory / f"counter_{victim}.db").exists()


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
    system = workers.http.get(workers.exporter_url + "/prometheus/metrics/system").text
    assert health_requests(system) > 0


def test_reader_sums_exactly_as_client_python_does(workers: Workers) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from app.multiprocess import FilesCollector

    workers.send(20)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ours.register(FilesCollector(str(workers.directory)))
    MultiProcessCollector(theirs, str(workers.directory))
    assert sorted(generate_latest(ours).splitlines()) == sorted(generate_latest(theirs).splitlines())
