"""Switches that act across processes, turned on real processes and observed where they act.

- ``GATEWAY_METRICS_API_KEY`` on the exporter (``python -m app.exporter``): 401 without the
  bearer token, 200 with it, on ``/metrics`` and the category endpoints.
- The gauges' multiprocess modes (``MULTIPROCESS_MODES`` of the catalogue): two worker
  processes on one ``PROMETHEUS_MULTIPROC_DIR`` set different values; the exporter shows
  their sum, the most recent one, the min or the max, as the catalogue says; once a worker
  is killed the live modes drop its value and the others keep it.
- The console script's flags (``--host``, ``--port``, ``--metrics-port``, ``--demo``,
  ``--log-level``) and the same settings from the environment (``GATEWAY_METRICS_HOST``,
  ``_PORT``, ``_METRICS_PORT``): the scrape routes alone on the metrics port, the rest 404
  there; the bearer token guards both ports.
- ``GATEWAY_METRICS_PROBE_URLS`` (and ``_PROBE_INTERVAL_SECONDS``) reaching the probe
  runner of a service: a loopback server counts the probes, and the provider health
  route shows each probed provider with its probes counted.

Every process is killed in ``finally``, every wait is polled under a bound, everything
listens on loopback (127.0.0.2 is loopback too). No assertion is on a duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.catalogue import MULTIPROCESS_MODES
from tests.support.loopback_targets import ProbeTarget
from tests.support.servers import LOOPBACK, ServerError, _die_with_parent, free_port, poll

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "switches-live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT_S = 60.0  # generous: a loaded 2-core machine imports the app in seconds
WAIT_S = 30.0
STOP_TIMEOUT_S = 10.0
#: A second loopback address: a server bound there is not reachable on 127.0.0.1.
OTHER_LOOPBACK = "127.0.0.2"
SCRAPE_ROUTES = ("/metrics", "/prometheus/metrics/all", "/prometheus/metrics/providers",
                 "/prometheus/metrics/system")
#: Routes of the public port that the internal metrics port must not serve.
PUBLIC_ONLY_ROUTES = ("/prometheus/metrics/summary", "/prometheus/metrics/health", "/prometheus/metrics/docs",
                      "/prometheus/metrics/status", "/health", "/ready", "/docs")


# --- processes ------------------------------------------------------------------------------


class Process:
    """A child process with its output in a log file; stop() kills it and is safe twice."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None, *,
                 pipes: bool = False) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        clean = {key: value for key, value in os.environ.items()
                 if not key.startswith("GATEWAY_METRICS_") and key != "PROMETHEUS_MULTIPROC_DIR"}
        self.process = subprocess.Popen(
            _die_with_parent(argv), cwd=ROOT, env={**clean, **(env or {})},
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log, stderr=self._log,
            text=pipes, bufsize=1 if pipes else -1,
        )
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


def wait_answering(process: Process, url: str, status: int, http: httpx.Client) -> None:
    """Until ``url`` answers ``status`` (the process is up), or the process has exited."""
    poll(lambda: not process.alive() or http.get(url).status_code == status, START_TIMEOUT_S, url)
    if not process.alive():
        raise ServerError(f"{url}: the process exited\n{process.log()}")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as client:  # loopback: never a proxy
        yield client


Samples = dict[tuple[str, frozenset], float]


def scrape(http: httpx.Client, url: str, headers: Mapping[str, str] | None = None) -> Samples:
    """Every sample of a scrape, by name and labels."""
    response = http.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# --- the exporter and its bearer token -------------------------------------------------------


@dataclass
class Exporter:
    url: str
    directory: Path
    process: Process


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory, http: httpx.Client) -> Iterator[Exporter]:
    """``python -m app.exporter`` over an empty multiprocess directory, with a bearer token
    (and ``--log-level info``)."""
    tmp = tmp_path_factory.mktemp("exporter")
    directory = tmp / "multiproc"
    directory.mkdir()
    port = free_port()
    process = Process([sys.executable, "-m", "app.exporter", "--host", LOOPBACK, "--port", str(port),
                       "--log-level", "info"],
                      tmp / "exporter.log",
                      {"PROMETHEUS_MULTIPROC_DIR": str(directory), "GATEWAY_METRICS_API_KEY": TOKEN})
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_answering(process, url + "/metrics", 401, http)
        yield Exporter(url, directory, process)
    finally:
        process.stop()


@pytest.mark.parametrize("path", SCRAPE_ROUTES)
def test_exporter_wants_the_bearer_token(exporter: Exporter, http: httpx.Client, path: str) -> None:
    missing = http.get(exporter.url + path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].lower().startswith("bearer")
    assert http.get(exporter.url + path, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    assert http.get(exporter.url + path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    granted = http.get(exporter.url + path, headers=AUTH)
    assert granted.status_code == 200
    assert granted.headers["content-type"].startswith("text/plain")
    list(text_string_to_metric_families(granted.text))  # Prometheus text that parses


def test_exporter_logs_at_its_log_level(exporter: Exporter) -> None:
    assert f"Started server process [{exporter.process.pid}]" in exporter.process.log()  # INFO, not the default WARNING


# --- the gauges' multiprocess modes -------------------------------------------------------------


class Worker:
    """A tests.support.gauge_worker process on the exporter's directory."""

    def __init__(self, directory: Path, log_path: Path) -> None:
        self.handle = Process([sys.executable, "-m", "tests.support.gauge_worker"], log_path,
                              {"PROMETHEUS_MULTIPROC_DIR": str(directory)}, pipes=True)
        self.pid = self.handle.pid
        self._lines: queue.Queue[str] = queue.Queue()
        stdout: IO[str] = self.handle.process.stdout  # type: ignore[assignment]
        threading.Thread(target=self._read, args=(stdout,), daemon=True, name=f"worker-{self.pid}").start()

    def _read(self, stdout: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed by stop()
            for line in stdout:
                self._lines.put(line)

    def answer(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise ServerError(f"worker {self.pid} did not answer\n{self.handle.log()}") from None
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        stdin: IO[str] = self.handle.process.stdin  # type: ignore[assignment]
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        answer = self.answer()
        assert answer.get("ok"), answer
        return answer

    def set(self, helper: str, *args: object) -> None:
        self.ask(op="set", helper=helper, args=list(args))


#: How the catalogue's modes combine the workers' values (client_python's documented modes).
COMBINE = {"sum": sum, "livesum": sum, "min": min, "livemin": min, "max": max, "livemax": max}


def test_gauges_of_two_workers_combine_as_the_catalogue_says(exporter: Exporter, http: httpx.Client,
                                                            tmp_path: Path) -> None:
    assert MULTIPROCESS_MODES["active_connections"] == "livesum"
    assert MULTIPROCESS_MODES["gatewayz_cost_by_provider"] == "sum"
    assert MULTIPROCESS_MODES["queue_size"] == "mostrecent"
    provider_gauges = {"gatewayz_provider_health_score": "score", "provider_availability": "availability",
                       "provider_error_rate": "error_rate", "gatewayz_provider_circuit_state": "circuit"}
    assert {MULTIPROCESS_MODES[name] for name in provider_gauges} == {"livemin", "livemax"}

    a = b = None
    try:
        a, b = Worker(exporter.directory, tmp_path / "a.log"), Worker(exporter.directory, tmp_path / "b.log")
        assert a.answer() == {"ready": True} and b.answer() == {"ready": True}

        def scraped() -> Samples:
            return scrape(http, exporter.url + "/metrics", AUTH)

        # livesum and sum: each worker its own share.
        a.set("set_active_connections", "db", 4)
        b.set("set_active_connections", "db", 6)
        a.set("record_provider_cost", "alpha", 1.5)
        b.set("record_provider_cost", "alpha", 2.25)
        # mostrecent: whichever worker wrote last, whatever the values' order.
        for worker, size in ((a, 5), (b, 7), (a, 3)):
            worker.set("set_queue_size", "jobs", size)
            assert value(scraped(), "queue_size", queue_name="jobs") == size
        b.set("set_queue_size", "jobs", 9)
        # The provider gauges: each worker's own tracker, published into its files.
        a.ask(op="calls", provider="alpha", status=200, count=10)
        b.ask(op="calls", provider="alpha", status=503, count=10)
        views = {a.pid: a.ask(op="publish", provider="alpha"), b.pid: b.ask(op="publish", provider="alpha")}
        for key in provider_gauges.values():  # the two views differ, so min, max and sum tell apart
            assert views[a.pid][key] != views[b.pid][key], (key, views)

        both = scraped()
        assert value(both, "active_connections", type="db") == COMBINE[MULTIPROCESS_MODES["active_connections"]](
            [4, 6]) == 10
        assert value(both, "gatewayz_cost_by_provider", provider="alpha") == pytest.approx(3.75)
        assert value(both, "queue_size", queue_name="jobs") == 9
        for name, key in provider_gauges.items():
            combine = COMBINE[MULTIPROCESS_MODES[name]]
            expected = combine(view[key] for view in views.values())
            assert value(both, name, provider="alpha") == pytest.approx(expected), name

        # Worker b dies: the live modes drop its values; sum and mostrecent keep them.
        b.handle.stop(signal.SIGKILL)

        def live_values_dropped() -> Samples | None:
            now = scraped()
            return now if value(now, "active_connections", type="db") == 4 else None

        after = poll(live_values_dropped, WAIT_S, "the dead worker's live gauges to drop")
        for name, key in provider_gauges.items():
            assert value(after, name, provider="alpha") == pytest.approx(views[a.pid][key]), name
        assert value(after, "gatewayz_cost_by_provider", provider="alpha") == pytest.approx(3.75)
        assert value(after, "queue_size", queue_name="jobs") == 9  # the dead worker's write was the latest
        assert a.handle.alive()
    finally:
        for worker in (a, b):
            if worker is not None:
                worker.handle.stop(signal.SIGKILL)


# --- the console script: host, ports, metrics port, demo, log level, bearer token -------------


@dataclass
class Service:
    process: Process
    url: str
    metrics_url: str
    host: str
    port: int
    metrics_port: int
    headers: dict[str, str]


@dataclass
class Services:
    flags: Service  # every setting from the command line, with a bearer token
    env: Service  # the same settings from GATEWAY_METRICS_*, with probes
    probes: ProbeTarget


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, http: httpx.Client) -> Iterator[Services]:
    tmp = tmp_path_factory.mktemp("console-script")
    probes = ProbeTarget()
    started: list[Process] = []
    try:
        port, metrics_port = free_port(OTHER_LOOPBACK), free_port(OTHER_LOOPBACK)
        flags = Process([sys.executable, "-m", "app.cli", "--host", OTHER_LOOPBACK, "--port", str(port),
                         "--metrics-port", str(metrics_port), "--demo", "--log-level", "info"],
                        tmp / "flags.log",
                        {"GATEWAY_METRICS_API_KEY": TOKEN, "GATEWAY_METRICS_ACCESS_LOG": "false"})
        started.append(flags)
        env_port, env_metrics_port = free_port(), free_port()
        env = Process([sys.executable, "-m", "app.cli", "--log-level", "warning"], tmp / "env.log", {
            "GATEWAY_METRICS_HOST": LOOPBACK,
            "GATEWAY_METRICS_PORT": str(env_port),
            "GATEWAY_METRICS_METRICS_PORT": str(env_metrics_port),
            "GATEWAY_METRICS_ACCESS_LOG": "false",
            "GATEWAY_METRICS_PROBE_URLS": f"upstream-up={probes.url}/up/health, upstream-down={probes.url}/down/health",
            "GATEWAY_METRICS_PROBE_INTERVAL_SECONDS": "0.2",
        })
        started.append(env)
        made = Services(
            flags=Service(flags, f"http://{OTHER_LOOPBACK}:{port}", f"http://{OTHER_LOOPBACK}:{metrics_port}",
                          OTHER_LOOPBACK, port, metrics_port, dict(AUTH)),
            env=Service(env, f"http://{LOOPBACK}:{env_port}", f"http://{LOOPBACK}:{env_metrics_port}",
                        LOOPBACK, env_port, env_metrics_port, {}),
            probes=probes,
        )
        for service in (made.flags, made.env):
            wait_answering(service.process, service.url + "/health", 200, http)
            wait_answering(service.process, service.metrics_url + "/metrics", 401 if service.headers else 200, http)
        yield made
    finally:
        for process in started:
            process.stop()
        probes.stop()


def test_host_and_ports_from_the_flags_are_bound(services: Services, http: httpx.Client) -> None:
    service = services.flags
    assert http.get(service.url + "/health").status_code == 200
    for port in (service.port, service.metrics_port):  # bound to 127.0.0.2 only
        with pytest.raises(httpx.ConnectError):
            http.get(f"http://{LOOPBACK}:{port}/health")
    # --log-level info: uvicorn says where each server listens.
    log = service.process.log()
    assert f"Uvicorn running on http://{OTHER_LOOPBACK}:{service.port}" in log
    assert f"Uvicorn running on http://{OTHER_LOOPBACK}:{service.metrics_port}" in log


def test_host_and_ports_from_the_environment_are_bound(services: Services, http: httpx.Client) -> None:
    service = services.env
    assert http.get(service.url + "/health").status_code == 200
    assert http.get(service.metrics_url + "/metrics").status_code == 200
    assert "Uvicorn running on" not in service.process.log()  # --log-level warning


@pytest.mark.parametrize("which", ["flags", "env"])
def test_metrics_port_serves_the_scrape_routes_alone(services: Services, http: httpx.Client, which: str) -> None:
    service: Service = getattr(services, which)
    for path in SCRAPE_ROUTES:
        response = http.get(service.metrics_url + path, headers=service.headers)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/plain"), path
    for path in PUBLIC_ONLY_ROUTES:
        assert http.get(service.metrics_url + path, headers=service.headers).status_code == 404, path
        assert http.get(service.url + path, headers=service.headers).status_code == 200, path
    # The same telemetry behind both ports: requests served on the public port are counted
    # in the scrape of the internal one (whose own requests are not instrumented).
    labels = {"method": "GET", "endpoint": "/health", "status_code": "200"}
    before = value(scrape(http, service.metrics_url + "/metrics", service.headers), "http_requests_total", **labels)
    for _ in range(3):
        assert http.get(service.url + "/health").status_code == 200
    after = value(scrape(http, service.metrics_url + "/metrics", service.headers), "http_requests_total", **labels)
    assert (after or 0) - (before or 0) == 3


def test_bearer_token_guards_both_ports(services: Services, http: httpx.Client) -> None:
    guarded, open_ = services.flags, services.env
    for url in (guarded.metrics_url + "/metrics", guarded.metrics_url + "/prometheus/metrics/models",
                guarded.url + "/metrics", guarded.url + "/prometheus/metrics/summary"):
        assert http.get(url).status_code == 401, url
        assert http.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
        assert http.get(url, headers=AUTH).status_code == 200, url
    assert http.get(guarded.url + "/health").status_code == 200  # liveness stays public
    for url in (open_.metrics_url + "/metrics", open_.url + "/prometheus/metrics/summary"):
        assert http.get(url).status_code == 200, url


def test_demo_flag_feeds_simulated_traffic(services: Services, http: httpx.Client) -> None:
    def inference_calls(service: Service) -> float:
        samples = scrape(http, service.metrics_url + "/prometheus/metrics/models", service.headers)
        return sum(v for (name, _), v in samples.items() if name == "model_inference_requests_total")

    poll(lambda: inference_calls(services.flags) > 0, WAIT_S, "demo traffic on the --demo service")
    assert inference_calls(services.env) == 0  # no --demo, no GATEWAY_METRICS_DEMO: nothing simulated


def test_probe_urls_reach_the_probe_runner(services: Services, http: httpx.Client) -> None:
    probes, service = services.probes, services.env
    # Probed at once on start, then every GATEWAY_METRICS_PROBE_INTERVAL_SECONDS (0.2 s,
    # not the default 15 s): a few probes of each within the bound.
    poll(lambda: probes.count("/up/health") >= 3 and probes.count("/down/health") >= 3, WAIT_S,
         "probes of both URLs")
    assert probes.paths() == {"/up/health", "/down/health"}
    report = http.get(service.url + "/prometheus/metrics/health").json()
    providers = {provider["provider"]: provider for provider in report["providers"]}
    assert set(providers) == {"upstream-up", "upstream-down"}  # known from their probes alone
    up, down = providers["upstream-up"], providers["upstream-down"]
    assert up["calls"] == down["calls"] == 0
    assert up["availability"] == 1.0 and up["state"] == "healthy"
    assert down["availability"] == 0.0 and down["state"] in ("degraded", "unavailable")
    assert report["failover_order"] == ["upstream-up", "upstream-down"]
