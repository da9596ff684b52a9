"""Provider health shared by real processes: the workers of one gateway, and two replicas
through a real Redis (issue 21, point 4).

- Two uvicorn workers of ``tests.support.load.Gateway`` (one ``PROMETHEUS_MULTIPROC_DIR``):
  calls failing upstream trip a provider in the worker that served them; then every
  answer of ``GET /prometheus/metrics/health``, from either worker (each answer names its
  worker in ``x-worker-pid``), shows its circuit open.
- Two replicas, each a single uvicorn process of ``gateway_app``, sharing through a
  ``redis-server`` the test starts (``tests.support.redis_server``): a trip in replica A
  shows in replica B within a few rounds of sharing; with Redis killed both keep answering (``/ready`` says the
  redis channel is not ok, and why); with Redis back (empty, on the same port) a new trip
  in A reaches B again. Both run on this machine, under its one host name: the app tells
  them apart by what else is their own (``Telemetry._host_id``: the multiprocess directory,
  or the pid without one), which the tests check in Redis; one test runs them without a
  directory, the other each with a directory of its own.

Every process is killed in a ``finally``; every wait is polled and bounded; loopback only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.scoring.sharing import INTERVAL_S as SHARING_INTERVAL_S
from app.telemetry import REDIS_INTERVAL_S
from tests.support.load import ROUTE, WORKER_PID_HEADER, Gateway
from tests.support.redis_server import RedisServer, redis_server
from tests.support.servers import LOOPBACK, _die_with_parent, free_port, terminate

ROOT = Path(__file__).resolve().parents[2]
HEALTH = "/prometheus/metrics/health"
#: HealthConfig's default: this many failures in a row open a circuit (Settings cannot change
#: it); its open_cooldown_s (5 s) keeps it open long enough for every check below.
CONSECUTIVE_FAILURES = 5
#: How often a test asks for the answer it waits for.
POLL_S = 0.05
START_TIMEOUT_S = 60.0
#: Requests on fresh connections after the agreement; more (up to MAX_ASKS) while one worker
#: has not answered yet.
ASKS, MAX_ASKS = 40, 400
#: A trip reaches the other replica in two rounds of each side (its Sharing round and the
#: Redis channel's, app.telemetry.REDIS_INTERVAL_S): asserted several times over, so a loaded
#: machine cannot fail it while a trip that is not shared still does (the open circuit's 5 s
#: cooldown is longer).
SHARE_BOUND_S = 5 * 2 * (REDIS_INTERVAL_S + SHARING_INTERVAL_S)
#: A call never waits on Redis; were it to, a Redis call gives up within about two socket
#: timeouts (RedisChannel's socket_timeout_s, 0.25 s): several times that.
CALL_BOUND_S = 5 * 2 * 0.25


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection for every request (no keep-alive): the
    listening socket hands each to whichever worker accepts it."""
    return httpx.Client(timeout=5.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))


def circuit_of(answer: dict[str, Any], provider: str) -> str | None:
    """The provider's circuit in a health answer (None: not known there)."""
    return next((p["circuit"] for p in answer["providers"] if p["provider"] == provider), None)


def redis_status(answer: dict[str, Any], key: str = "health_sharing") -> dict[str, Any]:
    """The redis channel of a ``/ready`` answer (``key="sharing"``: of a health answer)."""
    (channel,) = [c for c in answer[key] if c["name"] == "redis"]
    return dict(channel)


def fail_until_open(http: httpx.Client, url: str, provider: str) -> float:
    """POST calls failing upstream (503) until the health answer on the same connection
    shows the provider's circuit open; its monotonic time just after the last failure."""
    for _ in range(3 * CONSECUTIVE_FAILURES):
        failed = http.post(url + ROUTE, json={"provider": provider, "status_code": 503})
        assert failed.status_code == 502, failed.text
        at = time.monotonic()
        if circuit_of(http.get(url + HEALTH).json(), provider) == "open":
            return at
    raise AssertionError(f"{provider} never tripped at {url}")


def wait_for(what: str, timeout: float, predicate: Any) -> Any:
    """``predicate()``'s first truthy value, asked every POLL_S for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


# --- two workers of one gateway ---------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    served = Gateway(tmp_path, workers=2, env={WORKER_PID_HEADER: "1"})
    try:
        served.wait_ready(START_TIMEOUT_S)
        yield served
    finally:
        served.stop()


def test_a_trip_in_one_worker_is_what_every_worker_answers(gateway: Gateway) -> None:
    provider = "down-workers"
    with httpx.Client(timeout=5.0, trust_env=False) as one_connection:  # keep-alive: one worker
        tripped_at = fail_until_open(one_connection, gateway.url, provider)
        tripper = int(one_connection.get(gateway.url + "/health").headers["x-worker-pid"])

    with fresh_connections() as http:
        def other_worker_open() -> float | None:
            answer = http.get(gateway.url + HEALTH)
            assert answer.status_code == 200, answer.text
            if int(answer.headers["x-worker-pid"]) != tripper:
                return time.monotonic() if circuit_of(answer.json(), provider) == "open" else None
            return None

        agreed_at = wait_for("the other worker to show the circuit open", 5.0, other_worker_open)

        answers: list[tuple[int, str | None, str | None]] = []
        while len(answers) < ASKS or (len({pid for pid, _, _ in answers}) < 2 and len(answers) < MAX_ASKS):
            response = http.get(gateway.url + HEALTH)
            assert response.status_code == 200, response.text
            body = response.json()
            state = next((p["state"] for p in body["providers"] if p["provider"] == provider), None)
            answers.append((int(response.headers["x-worker-pid"]), circuit_of(body, provider), state))
            if len(answers) == ASKS:
                asked_in = time.monotonic() - agreed_at
        host = [c for c in body["sharing"] if c["name"] == "host"]
    per_worker = Counter(pid for pid, _, _ in answers)
    print(f"\ntrip in worker {tripper} -> open in the other: {(agreed_at - tripped_at) * 1000:.0f} ms "
          f"(polled every {POLL_S * 1000:.0f} ms); {len(answers)} answers over fresh connections "
          f"in {asked_in:.2f} s, per worker {dict(per_worker)}")
    assert len(per_worker) == 2, f"one worker answered every request: {per_worker}"
    assert tripper in per_worker
    assert {(circuit, state) for _, circuit, state in answers} == {("open", "unavailable")}, answers
    assert host and host[0]["ok"], host


# --- two replicas sharing through Redis ---------------------------------------------------

#: The key listing the replicas that published (RedisChannel, the default prefix).
HOSTS_KEY = "gateway-metrics:hosts"


class Replica:
    """``gateway_app`` under uvicorn, one process, sharing through Redis; with ``directory``
    its metrics in that PROMETHEUS_MULTIPROC_DIR of its own, else in its memory. Either way
    its Redis identity is the machine's host name and something of its own (app.telemetry:
    the directory, or the pid), so replicas on one machine are told apart as on two."""

    def __init__(self, tmp_dir: Path, name: str, redis_url: str, directory: Path | None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = tmp_dir / f"replica-{name}.log"
        env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(GATEWAY_METRICS_REDIS_URL=redis_url, GATEWAY_METRICS_ACCESS_LOG="false", PYTHONPATH=str(ROOT))
        if directory is not None:
            directory.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        argv = [sys.executable, "-m", "uvicorn", "tests.support.load:gateway_app", "--factory", "--host", LOOPBACK,
                "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(_die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait_ready(self, http: httpx.Client, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.name} exited:\n{self.log_path.read_text(errors='replace')}")
            try:
                if http.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"replica {self.name} not up in {timeout:g} s:\n"
                                     f"{self.log_path.read_text(errors='replace')}")
            time.sleep(POLL_S)

    def health(self, http: httpx.Client) -> dict[str, Any]:
        response = http.get(self.url + HEALTH)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ready(self, http: httpx.Client) -> dict[str, Any]:
        response = http.get(self.url + "/ready")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stop(self) -> None:
        terminate(self.process)


@contextmanager
def replicas(tmp_dir: Path, redis: RedisServer, directories: bool) -> Iterator[tuple[Replica, Replica]]:
    """Replicas A and B, up and both listed in Redis (so each reads the other's stream
    from its first outcome on)."""
    with ExitStack() as stack:
        pair = []
        for name in ("a", "b"):
            replica = Replica(tmp_dir, name, redis.url, tmp_dir / f"multiproc-{name}" if directories else None)
            stack.callback(replica.stop)
            pair.append(replica)
        a, b = pair
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            a.wait_ready(http)
            b.wait_ready(http)
        client = stack.enter_context(contextlib.closing(redis.client()))
        hosts = wait_for("both replicas listed in Redis", 5.0,
                         lambda: client.zcard(HOSTS_KEY) >= 2 and [m.decode() for m in client.zrange(HOSTS_KEY, 0, -1)])
        machine = socket.gethostname()
        assert len(hosts) == 2 and all(host.startswith(machine + ":") for host in hosts), hosts
        if not directories:
            assert sorted(hosts) == sorted(f"{machine}:pid{r.process.pid}" for r in (a, b)), hosts
        print(f"\nreplicas {'with' if directories else 'without'} directories, in Redis as {hosts}")
        yield a, b


def time_to_open(http: httpx.Client, replica: Replica, provider: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` until ``replica``'s health answer shows the provider's circuit
    open (asked every POLL_S, for at most ``timeout`` s)."""
    return float(wait_for(f"{provider} open in replica {replica.name}", timeout,
                          lambda: circuit_of(replica.health(http), provider) == "open" and time.monotonic() - since))


def test_replicas_share_trips_through_redis_and_outlive_it(tmp_path: Path) -> None:
    with redis_server() as redis, replicas(tmp_path, redis, directories=False) as (a, b), \
            httpx.Client(timeout=5.0, trust_env=False) as http:
        tripped_at = fail_until_open(http, a.url, "down-1")
        first = time_to_open(http, b, "down-1", tripped_at, timeout=SHARE_BOUND_S)
        shared = redis_status(b.health(http), "sharing")
        assert shared["ok"] and shared["received"] >= CONSECUTIVE_FAILURES, shared

        # Redis down: both go on answering, and say the channel fails.
        redis.kill()
        killed_at = time.monotonic()
        for replica in (a, b):
            down = wait_for(f"replica {replica.name} to report Redis down", 5.0,
                            lambda replica=replica: (lambda channel: not channel["ok"] and channel)(
                                redis_status(replica.ready(http))))
            reported_s = time.monotonic() - killed_at
            assert down["last_error"] and down["last_error_at"] and down["errors"] >= 1, down
            started = time.monotonic()
            call = http.post(replica.url + ROUTE, json={"model": "m1"})
            call_s = time.monotonic() - started
            assert call.status_code == 200 and call.json()["model"] == "m1", call.text
            health = replica.health(http)
            assert circuit_of(health, "down-1") == "open"
            assert not redis_status(health, "sharing")["ok"]
            print(f"replica {replica.name}, Redis down: reported after {reported_s:.2f} s "
                  f"({down['last_error']}); a call through the gateway took {call_s * 1000:.0f} ms")
            assert call_s < CALL_BOUND_S

        # Redis back, empty, on the same port: a new trip in A reaches B.
        redis.start()
        restarted_at = time.monotonic()
        for replica in (a, b):
            wait_for(f"replica {replica.name} to use Redis again", 5.0,
                     lambda replica=replica: redis_status(replica.ready(http))["ok"])
        back_s = time.monotonic() - restarted_at
        tripped_at = fail_until_open(http, a.url, "down-2")
        # Twice the bound: each side's first rounds on the new connection may fail once more.
        second = time_to_open(http, b, "down-2", tripped_at, timeout=2 * SHARE_BOUND_S)
        print(f"trip in A -> open in B: {first * 1000:.0f} ms; Redis back in use by both "
              f"{back_s:.2f} s after its restart; then trip in A -> open in B: {second * 1000:.0f} ms "
              f"(polled every {POLL_S * 1000:.0f} ms)")
        assert first < SHARE_BOUND_S
        assert second < 2 * SHARE_BOUND_S


def test_replicas_with_multiprocess_directories_of_their_own_share_both_ways(tmp_path: Path) -> None:
    with redis_server() as redis, replicas(tmp_path, redis, directories=True) as (a, b), \
            httpx.Client(timeout=5.0, trust_env=False) as http:
        delays = {}
        for source, target in ((a, b), (b, a)):
            provider = f"down-from-{source.name}"
            tripped_at = fail_until_open(http, source.url, provider)
            delays[f"{source.name}->{target.name}"] = time_to_open(http, target, provider, tripped_at,
                                                                   timeout=SHARE_BOUND_S)
            channels = {c["name"]: c for c in target.health(http)["sharing"]}
            assert set(channels) == {"host", "redis"} and all(c["ok"] for c in channels.values()), channels
        print("trip -> open in the other replica: "
              + ", ".join(f"{way} {seconds * 1000:.0f} ms" for way, seconds in delays.items()))
        assert all(seconds < SHARE_BOUND_S for seconds in delays.values())
