"""Real servers for the tests, on free loopback ports: Prometheus, VictoriaMetrics, and an
ASGI app under uvicorn.

    with serve_app(create_app) as app, start_prometheus(tmp_path, [app.url]) as prometheus:
        prometheus.wait_until('up{job="gateway-metrics"} == 1')
        data = prometheus.query("sum(http_requests_total)")  # the response's "data"

Every wait polls under a bound (no fixed sleeps); every server listens on 127.0.0.1 only;
a server that fails to start is stopped, and its log is in the exception. The target
``"self"`` stands for the server's own address, so a backend can scrape itself.
"""

from __future__ import annotations

import atexit
import inspect
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
#: "host:port", a URL ("http://127.0.0.1:8000/prometheus/metrics/all"), "self", or one
#: scrape job as a mapping: job, targets, and any scrape_config key (metrics_path,
#: scheme, params, labels, scrape_interval, authorization, ...).
ScrapeTarget = str | Mapping[str, Any]

#: Prometheus opens (or replays) its TSDB before it is ready: seconds on a slow CI box.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def terminate(process: subprocess.Popen[Any]) -> None:
    """Stop ``process`` if it still runs: SIGTERM, then SIGKILL when it outstays
    ``STOP_TIMEOUT_S``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
POLL_INTERVAL_S = 0.05
#: A free port can be taken by someone else between our probe and the server's bind.
BIND_ATTEMPTS = 3
LOG_TAIL_CHARS = 4000
LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server did not start, or a wait ran out of time."""


class QueryError(ServerError):
    """The backend answered a query with an error."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def poll(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``predicate()``'s first truthy value; ServerError naming ``what`` after ``timeout``.

    A connection error counts as "not yet": the server may still be starting.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except httpx.TransportError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise ServerError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(POLL_INTERVAL_S)


# --- scrape configuration -----------------------------------------------------------


def _split_target(target: str, own_address: str) -> tuple[str, str, str]:
    """(scheme, host:port, metrics path) of a string target."""
    if target == "self":
        return "http", own_address, "/metrics"
    if "://" not in target:
        return "http", target, "/metrics"
    parts = urlsplit(target)
    return parts.scheme, parts.netloc, parts.path or "/metrics"


def _job(mapping: Mapping[str, Any], own_address: str) -> dict[str, Any]:
    job = {key: value for key, value in mapping.items() if key not in ("job", "targets", "labels")}
    job["job_name"] = mapping["job"]
    addresses = [own_address if t == "self" else t for t in mapping.get("targets", ())]
    job["static_configs"] = [{"targets": addresses, "labels": dict(mapping.get("labels", {}))}]
    return job


def scrape_configs(targets: Sequence[ScrapeTarget], own_address: str, job: str) -> list[dict[str, Any]]:
    """``scrape_configs`` for ``targets``. String targets sharing a scheme and path form one
    job named ``job`` (``job-1``, ``job-2`` for the next combinations)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    mappings: list[dict[str, Any]] = []
    for target in targets:
        if isinstance(target, str):
            scheme, address, path = _split_target(target, own_address)
            grouped.setdefault((scheme, path), []).append(address)
        else:
            mappings.append(_job(target, own_address))
    plain = [
        {
            "job_name": job if index == 0 else f"{job}-{index}",
            "scheme": scheme,
            "metrics_path": path,
            "static_configs": [{"targets": addresses}],
        }
        for index, ((scheme, path), addresses) in enumerate(grouped.items())
    ]
    return plain + mappings


# --- backend processes --------------------------------------------------------------

_RUNNING: set[MetricsServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop()


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise ServerError(f"{name} is not installed: scripts/test.sh installs the Debian package")
    return path


def _die_with_parent(argv: list[str]) -> list[str]:
    """Wrap argv so the server gets SIGTERM if the test process dies without cleaning up."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class MetricsServer:
    """A Prometheus-compatible server process started by these helpers."""

    kind = "server"
    health_path = "/health"

    def __init__(
        self,
        tmp_dir: Path,
        targets: Sequence[ScrapeTarget],
        *,
        scrape_interval: str,
        job: str,
        data_dir: Path | None,
        extra_args: Sequence[str],
        start_timeout: float,
    ) -> None:
        self.scrape_interval = scrape_interval
        self.job = job
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=5.0, trust_env=False)  # loopback: never a proxy
        try:
            for _ in range(BIND_ATTEMPTS):
                self.port = free_port()
                self.url = f"http://{LOOPBACK}:{self.port}"
                self.workdir = Path(tmp_dir) / f"{self.kind}-{self.port}"
                self.workdir.mkdir(parents=True)
                self.config_path = self.workdir / "config.yml"
                self.log_path = self.workdir / "server.log"
                self.data_dir = Path(data_dir) if data_dir is not None else self.workdir / "data"
                self.write_config(targets)
                if self._launch(start_timeout):
                    return
            raise ServerError(f"{self.kind}: no free port after {BIND_ATTEMPTS} attempts\n{self.log_tail()}")
        except BaseException:
            self._http.close()
            raise

    # Subclasses say how they are configured and started.
    def config(self, targets: Sequence[ScrapeTarget]) -> dict[str, Any]:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def write_config(self, targets: Sequence[ScrapeTarget]) -> None:
        # JSON is YAML, and the config needs no YAML library.
        self.config_path.write_text(json.dumps(self.config(targets), indent=2))

    def _launch(self, timeout: float) -> bool:
        """Start and wait until healthy; False when the port was taken meanwhile."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                _die_with_parent(self.argv()), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _RUNNING.add(self)
        try:
            poll(self._healthy_or_exited, timeout, f"{self.kind} at {self.url} to be ready")
        except BaseException:
            self.stop()
            raise
        returncode = self.process.poll()
        if returncode is None:
            return True
        self.stop()
        if "address already in use" in self.log_tail():
            return False
        raise ServerError(f"{self.kind} exited with {returncode}\n{self.log_tail()}")

    def _healthy_or_exited(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        return self._http.get(self.url + self.health_path).status_code == 200

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.log_path} (tail) ---\n{text[-LOG_TAIL_CHARS:]}"

    # --- using it ---------------------------------------------------------------

    def query(self, expr: str, **params: str) -> dict[str, Any]:
        """The ``data`` of an instant query's answer (``resultType``, ``result``)."""
        response = self._http.post(self.url + "/api/v1/query", data={"query": expr, **params})
        try:
            body = response.json()
        except ValueError:
            raise QueryError(f"{self.kind} answered {response.status_code}: {response.text[:500]}") from None
        if body.get("status") != "success":
            raise QueryError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return dict(body["data"])

    def wait_until(self, condition: str | Callable[[], T], timeout: float = 15.0) -> Any:
        """Poll until ``condition`` holds; return what made it hold.

        A string is a PromQL expression that must return a non-empty result (the result
        list is returned); a callable must return something truthy (that is returned).
        """
        if isinstance(condition, str):
            expr = condition
            return poll(lambda: self.query(expr)["result"], timeout, f"{expr!r} on {self.kind}")
        return poll(condition, timeout, f"{getattr(condition, '__name__', 'condition')} on {self.kind}")

    def self_metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the server's own samples ``name{labels...}``, read live from its /metrics
        (not from its TSDB, which lags by a scrape)."""
        text = self._http.get(self.url + "/metrics").text
        wanted = dict(labels or {})
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted.items() <= sample.labels.items()
        )

    def set_targets(self, targets: Sequence[ScrapeTarget]) -> None:
        """Rewrite the scrape config and make the server load it."""
        self.write_config(targets)
        self.reload()

    def reload(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); safe to call twice."""
        _RUNNING.discard(self)
        process, self.process = self.process, None
        if process is not None:
            terminate(process)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start again on the same port and data directory (after a crash or stop())."""
        self.stop()
        if not self._launch(timeout):
            raise ServerError(f"{self.kind}: port {self.port} was taken meanwhile\n{self.log_tail()}")

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} running={self.process is not None}>"


class PrometheusServer(MetricsServer):
    kind = "prometheus"
    health_path = "/-/ready"  # 200 once the TSDB is open and queries are served

    def __init__(self, *args: Any, rule_files: Sequence[Path | str] = (), **kwargs: Any) -> None:
        self.rule_files = [str(Path(path).resolve()) for path in rule_files]
        super().__init__(*args, **kwargs)

    def config(self, targets: Sequence[ScrapeTarget]) -> dict[str, Any]:
        interval = self.scrape_interval
        return {
            # scrape_timeout defaults to 10 s, which Prometheus rejects above the interval.
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": self.rule_files,
            "scrape_configs": scrape_configs(targets, f"{LOOPBACK}:{self.port}", self.job),
        }

    def argv(self) -> list[str]:
        return [
            _binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            f"--storage.tsdb.path={self.data_dir}",
            "--web.enable-lifecycle",  # for reload()
            *self.extra_args,
        ]

    def reload(self) -> None:
        response = self._http.post(self.url + "/-/reload")
        if response.status_code != 200:
            raise ServerError(f"prometheus reload failed: {response.text}\n{self.log_tail()}")


class VictoriaMetricsServer(MetricsServer):
    kind = "victoriametrics"

    def config(self, targets: Sequence[ScrapeTarget]) -> dict[str, Any]:
        interval = self.scrape_interval
        # VictoriaMetrics rejects Prometheus-only keys (evaluation_interval, rule_files).
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": scrape_configs(targets, f"{LOOPBACK}:{self.port}", self.job),
        }

    def argv(self) -> list[str]:
        return [
            _binary("victoria-metrics"),
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            f"-promscrape.config={self.config_path}",
            # By default the newest 30 s are hidden from queries, and answers are cached:
            # tests want what was just scraped.
            "-search.latencyOffset=0s",
            "-search.disableCache",
            *self.extra_args,
        ]

    def reload(self) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGHUP)  # VictoriaMetrics re-reads -promscrape.config


def start_prometheus(
    tmp_dir: Path | str,
    targets: Sequence[ScrapeTarget] = ("self",),
    scrape_interval: str = "1s",
    rule_files: Sequence[Path | str] = (),
    extra_args: Sequence[str] = (),
    *,
    job: str = "gateway-metrics",
    data_dir: Path | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> PrometheusServer:
    """A real Prometheus on a free loopback port, ready to query, scraping ``targets``
    every ``scrape_interval``. ``data_dir`` may hold backfilled blocks."""
    return PrometheusServer(
        Path(tmp_dir), targets, scrape_interval=scrape_interval, job=job, data_dir=data_dir,
        extra_args=extra_args, start_timeout=start_timeout, rule_files=rule_files,
    )


def start_victoriametrics(
    tmp_dir: Path | str,
    targets: Sequence[ScrapeTarget] = ("self",),
    scrape_interval: str = "1s",
    extra_args: Sequence[str] = (),
    *,
    job: str = "gateway-metrics",
    data_dir: Path | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> VictoriaMetricsServer:
    """A real single-node VictoriaMetrics on a free loopback port, scraping ``targets``."""
    return VictoriaMetricsServer(
        Path(tmp_dir), targets, scrape_interval=scrape_interval, job=job, data_dir=data_dir,
        extra_args=extra_args, start_timeout=start_timeout,
    )


# --- an ASGI app under uvicorn ------------------------------------------------------


def _is_factory(app: Callable[..., Any]) -> bool:
    """True for ``create_app``-style factories, False for ASGI apps (scope, receive, send)."""
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return not any(p.default is p.empty and p.kind in positional for p in parameters)


class AppServer:
    """An ASGI app served by uvicorn in a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as a scrape target."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Ask uvicorn to exit; force it when connections linger. Safe to call twice."""
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S / 2)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S / 2)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_app(
    app: Callable[..., Any],
    port: int | None = None,
    *,
    host: str = LOOPBACK,
    start_timeout: float = START_TIMEOUT_S,
) -> AppServer:
    """Serve an ASGI app (or a no-argument factory of one, such as ``create_app``) with
    uvicorn on ``host`` and a free port (or ``port``); returns once its lifespan has started."""
    asgi_app = app() if _is_factory(app) else app
    # We bind the socket ourselves, so there is no window in which another process can
    # take the port between choosing it and serving on it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port or 0))
        # log_config=None: leave the test process's logging alone.
        config = uvicorn.Config(asgi_app, log_config=None, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                  name=f"uvicorn-{sock.getsockname()[1]}")
        thread.start()
        handle = AppServer(server, thread, sock)
    except BaseException:
        sock.close()
        raise
    try:
        poll(lambda: server.started or not thread.is_alive(), start_timeout, f"the app at {handle.url}")
        if not server.started:
            raise ServerError(f"the app at {handle.url} failed to start (see the log above)")
    except BaseException:
        handle.stop()
        raise
    return handle


# --- gateway-metrics in processes of their own ----------------------------------------


class ServiceProcess:
    """A gateway-metrics instance in a subprocess: a fleet member that recorded a known
    recipe (tests.support.instance), or with ``recipe=False`` the plain console script."""

    def __init__(self, tmp_dir: Path, index: int, env: Mapping[str, str], start_timeout: float,
                 recipe: bool = True, steady: bool = False) -> None:
        import os
        import sys

        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.address = f"{LOOPBACK}:{self.port}"
        self.log_path = Path(tmp_dir) / f"instance-{index}-{self.port}.log"
        if recipe:
            argv = [sys.executable, "-m", "tests.support.instance", "--port", str(self.port), "--index", str(index)]
            if steady:
                argv.append("--steady")
        else:
            argv = [sys.executable, "-m", "app.cli", "--port", str(self.port), "--log-level", "warning"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                _die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[2],
            )
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            try:
                poll(lambda: self.process.poll() is not None or http.get(self.url + "/health").status_code == 200,
                     start_timeout, f"instance {index} at {self.url}")
            except BaseException:
                self.stop()
                raise
        if self.process.poll() is not None:
            raise ServerError(f"instance {index} exited: {self.log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")

    def stop(self) -> None:
        terminate(self.process)


def start_service(tmp_dir: Path | str, index: int = 0, env: Mapping[str, str] | None = None,
                  start_timeout: float = START_TIMEOUT_S, recipe: bool = True,
                  steady: bool = False) -> ServiceProcess:
    """Instance ``index`` of a test fleet, serving on a free loopback port."""
    return ServiceProcess(Path(tmp_dir), index, env or {}, start_timeout, recipe, steady)
