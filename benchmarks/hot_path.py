"""Cost of gateway-metrics on the gateway's hot path, measured side by side in one run.

Part 1 drives the same FastAPI route in-process (no sockets, one event loop) bare and
under each instrumentation, interleaving the variants round by round so they share the
machine's state, and prints the median cost per request and its ratio to the bare route.

Part 2 times each recording helper against the raw prometheus_client calls
(``labels(...).inc()`` / ``.observe()``) that record the same samples, both ways a gateway
calls it: the ``app.metrics`` function (which records into the process's default
``Telemetry``) and the same helper as a method of that ``Telemetry`` instance
(``telemetry.record_upstream_call(...)``); the three are timed in turn. Then the health
tracker's share of the upstream-call helpers (``begin``, ``allow``, ``record``), which
the raw calls do not do, and the cost of ``GATEWAY_METRICS_GENAI_SEMCONV`` (the OpenTelemetry
GenAI instruments): the upstream-call helpers with the usage of a streamed call, on a
telemetry with the option off and one with it on, timed in turn.

    .venv/bin/python benchmarks/hot_path.py            # scripts/setup.sh test,bench first
    .venv/bin/python benchmarks/hot_path.py --helpers  # part 2 alone

Part 3 runs part 1's gateway-metrics variants again in a process of its own in
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as each of several workers runs):
every request is written to the worker's files, so no count is lost with the worker.

Targets (ratios to the bare route of the same run): metrics and request ids <= x1.15,
with the JSON access log on <= x1.35; a helper <= 2x its raw calls (either way it is
called); multiprocess mode, access log off, <= x1.30.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram

from app import metrics
from app import telemetry as telemetry_module
from app.access_log import ACCESS_LOGGER, flush_access_logs
from app.catalogue import INFERENCE_BUCKETS
from app.middleware import MetricsMiddleware
from app.scoring import HealthTracker
from app.settings import Settings
from app.telemetry import Telemetry

Scope = dict[str, Any]

BASE_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/v1/items/42",
    "raw_path": b"/v1/items/42",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("bench", 80),
}


def route_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def variants(log_path: str, telemetry: Telemetry) -> dict[str, Any]:
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware

    logger = logging.getLogger(ACCESS_LOGGER)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    quiet = route_app()
    quiet.add_middleware(MetricsMiddleware, access_log=False, telemetry=telemetry)
    logged = route_app()
    logged.add_middleware(MetricsMiddleware, access_log=True, telemetry=telemetry)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return {"bare route": route_app(), "gateway-metrics, access log off": quiet,
                "gateway-metrics, JSON access log on": logged}
    instrumented = route_app()
    Instrumentator().instrument(instrumented)
    exported = route_app()
    exported.add_middleware(PrometheusMiddleware, group_paths=True)
    return {
        "bare route": route_app(),
        "gateway-metrics, access log off": quiet,
        "gateway-metrics, JSON access log on": logged,
        "prometheus-fastapi-instrumentator": instrumented,
        "starlette-exporter": exported,
    }


async def drive(app: Any, requests: int) -> float:
    """Seconds per request for ``requests`` calls of ``app``."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        scope = dict(BASE_SCOPE)
        await app(scope, receive, send)
    return (time.perf_counter() - started) / requests


async def measure_apps(apps: dict[str, Any], rounds: int, requests: int) -> dict[str, float]:
    for app in apps.values():  # build middleware stacks, warm caches
        await drive(app, 200)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            samples[name].append(await drive(app, requests))
    return {name: statistics.median(values) for name, values in samples.items()}


Call = Callable[[], None]


def helper_rows(telemetry: Telemetry) -> list[tuple[str, Call, Call, Call]]:
    """(helper, its ``app.metrics`` call, the same call as a method of ``telemetry``, raw
    prometheus_client calls recording the same samples). ``telemetry`` is the process's
    default, so both calls record into the same children."""
    t = telemetry
    registry = CollectorRegistry()
    requests = Counter("raw_requests", "", ["provider", "model", "status"], registry=registry)
    duration = Histogram("raw_duration", "", ["provider", "model"], buckets=INFERENCE_BUCKETS, registry=registry)
    provider_time = Histogram("raw_provider", "", ["provider"], buckets=INFERENCE_BUCKETS, registry=registry)
    tokens = Counter("raw_tokens", "", ["provider", "model", "token_type"], registry=registry)
    credits = Counter("raw_credits", "", ["provider", "model"], registry=registry)
    key_usage = Counter("raw_key_usage", "", ["status"], registry=registry)
    hits = Counter("raw_hits", "", ["cache_name"], registry=registry)
    db = Counter("raw_db", "", ["table", "operation"], registry=registry)
    db_time = Histogram("raw_db_time", "", ["table"], registry=registry)

    def raw_upstream() -> None:
        requests.labels("openai", "gpt-4o", "success").inc()
        duration.labels("openai", "gpt-4o").observe(0.8)
        provider_time.labels("openai").observe(0.8)

    def raw_tokens() -> None:
        tokens.labels("openai", "gpt-4o", "input").inc(120)
        tokens.labels("openai", "gpt-4o", "output").inc(300)

    def track_inference() -> None:
        with metrics.track_model_inference("openai", "gpt-4o"):
            pass

    def track_inference_method() -> None:
        with t.track_model_inference("openai", "gpt-4o"):
            pass

    def raw_track_inference() -> None:
        started = time.perf_counter()
        elapsed = time.perf_counter() - started
        requests.labels("openai", "gpt-4o", "success").inc()
        duration.labels("openai", "gpt-4o").observe(elapsed)
        provider_time.labels("openai").observe(elapsed)

    def raw_db() -> None:
        db.labels("users", "select").inc()
        db_time.labels("users").observe(0.002)

    return [
        ("track_model_inference (with health tracking)", track_inference, track_inference_method,
         raw_track_inference),
        ("record_upstream_call (with health tracking)",
         lambda: metrics.record_upstream_call("openai", "gpt-4o", duration_s=0.8),
         lambda: t.record_upstream_call("openai", "gpt-4o", duration_s=0.8), raw_upstream),
        ("record_tokens_used", lambda: metrics.record_tokens_used("openai", "gpt-4o", 120, 300),
         lambda: t.record_tokens_used("openai", "gpt-4o", 120, 300), raw_tokens),
        ("record_credits_used (with top-N user)",
         lambda: metrics.record_credits_used("openai", "gpt-4o", "user-1", 1.5),
         lambda: t.record_credits_used("openai", "gpt-4o", "user-1", 1.5),
         lambda: credits.labels("openai", "gpt-4o").inc(1.5)),
        ("record_api_key_usage (with top-N key)",
         lambda: metrics.record_api_key_usage("sk-live-abc", "success"),
         lambda: t.record_api_key_usage("sk-live-abc", "success"),
         lambda: key_usage.labels("success").inc()),
        ("record_cache_hit", lambda: metrics.record_cache_hit("responses"),
         lambda: t.record_cache_hit("responses"), lambda: hits.labels("responses").inc()),
        ("record_database_query", lambda: metrics.record_database_query("users", "select", 0.002),
         lambda: t.record_database_query("users", "select", 0.002), raw_db),
    ]


def best_of(calls: list[Call], number: int, repeat: int) -> list[float]:
    """Seconds per call of each of ``calls``, best of ``repeat`` runs taken in turn, so a
    load that comes and goes on a shared machine weighs on all of them alike."""
    runs: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for call, times in zip(calls, runs, strict=True):
            times.append(timeit.timeit(call, number=number))
    return [min(times) / number for times in runs]


def best_of_pair(helper: Call, raw: Call, number: int, repeat: int) -> tuple[float, float]:
    helper_s, raw_s = best_of([helper, raw], number, repeat)
    return helper_s, raw_s


def measure_helpers(repeat: int, telemetry: Telemetry) -> None:
    """Each helper as an ``app.metrics`` function and as a ``Telemetry`` method, against
    the raw calls (one raw timing per helper, shared by its two rows)."""
    print(f"{'helper':46} {'called as':22} {'us':>7} {'raw us':>8} {'x raw':>7}")
    for name, helper, method, raw in helper_rows(telemetry):
        helper_s, method_s, raw_s = best_of([helper, method, raw], 20_000, repeat)
        print(f"{name:46} {'app.metrics function':22} {helper_s * 1e6:7.2f} {raw_s * 1e6:8.2f} "
              f"{helper_s / raw_s:7.2f}")
        print(f"{'':46} {'telemetry method':22} {method_s * 1e6:7.2f} {raw_s * 1e6:8.2f} "
              f"{method_s / raw_s:7.2f}")
    measure_tracker(repeat)
    measure_genai(repeat)


def measure_genai(repeat: int) -> None:
    """A streamed call with its usage, recorded with the GenAI instruments off and on."""
    off = Telemetry(Settings(access_log=False))
    on = Telemetry(Settings(access_log=False, genai_semconv=True))

    def upstream(t: Telemetry) -> Call:
        return lambda: t.record_upstream_call("openai", "gpt-4o", duration_s=2.0, ttft_s=0.3, input_tokens=120,
                                              output_tokens=300)

    def tracked(t: Telemetry) -> Call:
        def call() -> None:
            with t.track_model_inference("openai", "gpt-4o") as inference:
                inference.first_token()
                inference.usage(120, 300)
        return call

    print("GenAI semantic conventions (GATEWAY_METRICS_GENAI_SEMCONV), a streamed call with its usage:")
    print(f"  {'helper':44} {'off us':>8} {'on us':>8} {'on - off':>9}")
    for name, make in (("record_upstream_call(..., input/output_tokens)", upstream),
                       ("track_model_inference + first_token + usage", tracked)):
        off_s, on_s = best_of([make(off), make(on)], 20_000, repeat)
        print(f"  {name:44} {off_s * 1e6:8.2f} {on_s * 1e6:8.2f} {(on_s - off_s) * 1e6:9.2f}")


def measure_tracker(repeat: int) -> None:
    """The health tracker's share of the upstream-call helpers (the raw calls track no health)."""
    tracker = HealthTracker()
    tracker.record("openai", duration_s=0.8)  # a provider with state, as after its first call

    def one_call() -> None:
        tracker.record("openai", duration_s=0.8, permit=tracker.begin("openai"))

    begin_s, call_s = best_of_pair(lambda: tracker.begin("openai"), one_call, 20_000, repeat)
    allow_s, _ = best_of_pair(lambda: tracker.allow("openai"), one_call, 20_000, repeat)
    print("of which health tracking (closed circuit):")
    print(f"  {'tracker.begin (permit, call in flight)':44} {begin_s * 1e6:10.2f}")
    print(f"  {'tracker.allow (permit)':44} {allow_s * 1e6:10.2f}")
    print(f"  {'tracker.record (outcome, its permit back)':44} {(call_s - begin_s) * 1e6:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--helpers", action="store_true", help="run part 2 (the helpers) alone")
    parser.add_argument("--repeat", type=int, default=9, help="part 2: runs of 20,000 calls per helper")
    args = parser.parse_args()
    # A fresh telemetry (and health tracker), the process's default: the app.metrics
    # helpers and the middleware record into it.
    telemetry = Telemetry(Settings())
    telemetry_module.set_default(telemetry)
    if args.helpers:
        measure_helpers(args.repeat, telemetry)
        return

    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "access.log")
        results = asyncio.run(measure_apps(variants(log_path, telemetry), args.rounds, args.requests))
        flush_access_logs()
        with open(log_path) as log:
            lines = sum(1 for _ in log)
    bare = results["bare route"]
    print(f"Per-request cost of one FastAPI route, in-process, median of {args.rounds} rounds "
          f"x {args.requests} requests ({os.cpu_count()} cores)")
    print(f"{'variant':42} {'us/request':>11} {'x bare':>8}")
    for name, seconds in results.items():
        print(f"{name:42} {seconds * 1e6:11.1f} {seconds / bare:8.2f}")
    print(f"(access log: {lines} JSON lines written to a file)")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    print()
    measure_helpers(args.repeat, telemetry)
    print()
    print("Multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, as in each of several workers):")
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run([sys.executable, *sys.argv], check=True,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})


if __name__ == "__main__":
    main()
