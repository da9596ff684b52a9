"""Backend faults under load: while summaries are read in a loop, the real Prometheus is
frozen (SIGSTOP), resumed, killed and restarted on the same port. Every answer is a 200
within a few times the deadline; ``errors`` and ``stale`` say what happened; the source
is ``prometheus`` again once the backend is back."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.servers import PrometheusServer, ServiceProcess, poll, start_prometheus, start_service

DEADLINE_S = 1.0
#: A summary makes one batch of queries under the deadline: several times it holds on a loaded
#: 2-core box, and still fails a summary that waits on the frozen Prometheus (httpx waits 30 s).
BOUND_S = 5 * DEADLINE_S
READERS = 3
#: Each reader stops after this many reads, or when the test ends.
MAX_READS = 1000
PHASE_TIMEOUT_S = 15.0
SUMMARY = "/prometheus/metrics/summary"


@dataclass
class Reading:
    started: float
    elapsed: float
    status: int
    source: str = ""
    stale: bool = False
    kinds: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)


class Readers:
    """Threads reading the summary back to back, keeping every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.readings: list[Reading] = []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True) for _ in range(READERS)]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        with httpx.Client(timeout=30.0, trust_env=False) as client:
            for _ in range(MAX_READS):
                if self._done.is_set():
                    return
                started = time.monotonic()
                response = client.get(self.url + SUMMARY)
                reading = Reading(started, time.monotonic() - started, response.status_code)
                if response.status_code == 200:
                    body = response.json()
                    reading.source, reading.stale = body["source"], body["stale"]
                    reading.kinds = {error["kind"] for error in body["errors"]}
                    reading.messages = {f'{error["kind"]}: {error["message"]}' for error in body["errors"]}
                self.readings.append(reading)

    def first_after(self, since: float, matches: Callable[[Reading], bool], what: str) -> Reading:
        """The first answer to a read started after ``since`` that ``matches``."""
        return poll(lambda: next((r for r in list(self.readings) if r.started >= since and matches(r)), None),
                    PHASE_TIMEOUT_S, what)

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(30)


def kinds(readings: list[Reading]) -> set[str]:
    return set().union(*(r.kinds for r in readings))


def messages(readings: list[Reading]) -> set[str]:
    return set().union(*(r.messages for r in readings))


def healthy(reading: Reading) -> bool:
    return reading.source == "prometheus" and not reading.stale and not reading.kinds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, PrometheusServer]]:
    tmp = tmp_path_factory.mktemp("faults")
    with start_prometheus(tmp, ["self"]) as prometheus:
        service = start_service(tmp, env={"GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
                                          "GATEWAY_METRICS_QUERY_DEADLINE_SECONDS": str(DEADLINE_S),
                                          "GATEWAY_METRICS_QUERY_CACHE_SECONDS": "0",
                                          "GATEWAY_METRICS_ACCESS_LOG": "false"})
        try:
            prometheus.set_targets([service.address])
            prometheus.wait_until('up{job="gateway-metrics"} == 1', timeout=30)
            yield service, prometheus
        finally:
            service.stop()


def test_freeze_resume_kill_restart_under_summary_load(stack: tuple[ServiceProcess, PrometheusServer]) -> None:
    service, prometheus = stack
    readers = Readers(service.url)
    try:
        readers.first_after(time.monotonic(), healthy, "a healthy summary first")

        assert prometheus.process is not None
        prometheus.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            frozen = readers.first_after(frozen_at, lambda r: "timeout" in r.kinds, "a timeout while frozen")
        finally:
            prometheus.process.send_signal(signal.SIGCONT)
        # The last good answers are served, marked stale.
        assert frozen.stale and frozen.source == "prometheus"
        readers.first_after(time.monotonic(), healthy, "prometheus again after SIGCONT")

        prometheus.process.kill()
        prometheus.process.wait()
        killed_at = time.monotonic()
        down = readers.first_after(killed_at, lambda r: "unreachable" in r.kinds, "unreachable once killed")
        assert down.stale and down.source == "prometheus"

        prometheus.restart()
        readers.first_after(time.monotonic(), healthy, "prometheus again after the restart")
    finally:
        readers.stop()

    readings = readers.readings
    assert {r.status for r in readings} == {200}, "a summary failed"
    slowest = max(r.elapsed for r in readings)
    assert slowest < BOUND_S, f"slowest answer {slowest:.2f} s of {len(readings)}"
    # Nothing but what happened: no error kind other than the faults'.
    # Nothing but what happened: the faults' kinds, and the restarted Prometheus' 503s
    # ("Service Unavailable") while it replays its TSDB, before it is ready.
    before, after = [r for r in readings if r.started < killed_at], [r for r in readings if r.started >= killed_at]
    expected = {"timeout", "unreachable", "fallback"}
    assert kinds(before) <= expected, messages(before)
    assert kinds(after) <= expected | {"http_error"}, messages(after)
    print(f"{len(readings)} summaries, slowest {slowest:.2f} s")
