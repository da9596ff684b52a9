"""Two real worker processes in multiprocess mode, their supervisor and its exporter.

A supervisor (``gateway-metrics --workers 2``, the gunicorn master of
``deploy/gunicorn.conf.py``) is started on free loopback ports with a directory of its own
that holds a stale file of an "earlier run"; :func:`check_totals_survive_a_killed_worker`
is the check every supervisor must pass.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app import supervision
from tests.support.servers import LOOPBACK, ServerError, free_port, poll

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0  # generous: a loaded 2-core machine starts a worker in seconds
#: How soon the processes of a supervisor killed with SIGKILL must have exited: they notice
#: within a check interval, and exit hard after the grace of a graceful stop at most.
ORPHAN_EXIT_S = supervision.PARENT_CHECK_S + supervision.GRACE_S + 4.0
STALE_FILE = "counter_999999.db"


class Workers:
    """``command(port, metrics_port)`` gives the supervisor's argv and extra environment."""

    def __init__(self, tmp_dir: Path,
                 command: Callable[[int, int], tuple[list[str], dict[str, str]]]) -> None:
        self.directory = tmp_dir / "multiproc"
        self.directory.mkdir()
        (self.directory / STALE_FILE).write_bytes(b"left by an earlier run")
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.exporter_url = f"http://{LOOPBACK}:{self.metrics_port}"
        self.log = (tmp_dir / "workers.log").open("wb")
        argv, extra_env = command(self.port, self.metrics_port)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory),
               "GATEWAY_METRICS_ACCESS_LOG": "false", **extra_env}
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.http = httpx.Client(timeout=10.0, trust_env=False)

    def wait_ready(self) -> None:
        poll(lambda: self.process.poll() is not None or self.http.get(self.url + "/health").status_code == 200,
             START_TIMEOUT_S, "the workers")
        poll(lambda: (self.process.poll() is not None
                      or self.http.get(self.exporter_url + "/metrics").status_code == 200),
             START_TIMEOUT_S, "the exporter")
        assert self.process.poll() is None, "the supervisor exited"

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

    def children(self) -> dict[int, bytes]:
        """The supervisor's child processes and their command lines."""
        found: dict[int, bytes] = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes()
                except FileNotFoundError:  # ended meanwhile
                    pass
        return found

    def exporter_pid(self) -> int:
        (pid,) = [pid for pid, cmdline in self.children().items() if b"app.exporter" in cmdline]
        return pid

    def worker_processes(self) -> set[int]:
        """The supervisor's worker processes (its other children are the exporter and,
        under uvicorn's supervisor, multiprocessing's resource tracker)."""
        return {pid for pid, cmdline in self.children().items()
                if b"app.exporter" not in cmdline and b"multiprocessing.resource_tracker" not in cmdline}

    def worker_pids(self) -> set[int]:
        """Processes that have recorded requests in the directory."""
        return {int(path.stem.split("_")[-1]) for path in self.directory.glob("counter_*.db")}

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie, not yet reaped, has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def check_sigkill_to_the_supervisor_stops_everything(workers: Workers) -> float:
    """SIGKILL to a ready supervisor: within ORPHAN_EXIT_S every process it started (both
    workers, the exporter, any resource tracker) has exited, and nothing listens on the
    ports any more, so a restarted supervisor can bind them. Returns the seconds the last
    one took after the kill."""
    workers.wait_ready()
    started = workers.children()
    assert len(workers.worker_processes()) == 2, started
    workers.process.kill()
    workers.process.wait()
    killed_at = time.monotonic()
    try:
        try:
            poll(lambda: all(gone(pid) for pid in started), ORPHAN_EXIT_S, "the supervisor's processes")
        except ServerError:
            alive = {pid: cmdline for pid, cmdline in started.items() if not gone(pid)}
            raise AssertionError(f"alive {ORPHAN_EXIT_S:g} s after their supervisor's SIGKILL: {alive}") from None
        took = time.monotonic() - killed_at
    finally:
        for pid in started:  # a failed check leaves nothing behind either
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    for port in (workers.port, workers.metrics_port):
        with socket.socket() as sock:
            # As uvicorn binds: only a socket still listening on the port makes this fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
            sock.listen()
    return took


def health_requests(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            return sum(s.value for s in family.samples
                       if s.name == "http_requests_total" and s.labels["endpoint"] == "/health")
    return 0.0


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def check_totals_survive_a_killed_worker(workers: Workers) -> None:
    """Exact totals of both workers at the exporter; one worker killed with SIGKILL and
    replaced by the supervisor; exact totals again, no counter ever going backwards."""
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
