"""Scrapes of a big registry against the gateway's own requests, side by side in one run.

Part 1, one process: an instrumented gateway served by uvicorn (one worker) holds about
``--lines`` exposition lines in its own registry (providers x models of inference traffic,
the series cap raised to hold them) and one closed-loop client calls a gateway route for
each phase: while ``/metrics`` is scraped once a second (as Prometheus would, at a short
interval), then back to back, in windows of ``--window`` seconds alternated with quiet ones
(``--rounds`` of each), so the machine's drifting load weighs on both alike. It prints
throughput and p99 of the scraped windows and their ratios to the quiet ones.

Part 2, several workers: the same traffic recorded into a multiprocess directory; the route
served by a worker in multiprocess mode; the exporter process (``app.exporter``) scraped
back to back, in windows alternated with quiet ones.

    .venv/bin/python benchmarks/scrape_stall.py            # about two minutes

Targets: scraped once a second, throughput >= 0.9x quiet and p99 <= 1.5x quiet; the exporter
scraped back to back, >= 0.8x and <= 2x. The summaries' snapshots are set to every 300 s in
both parts (they read the registry too, a cost of their own, not the scrape's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = 8
#: Lines one model adds: requests by status, tokens, credits, histograms' buckets...
LINES_PER_MODEL = 19


def fill(directory: str, lines: int) -> None:
    """Record traffic for enough provider/model pairs to expose about ``lines`` lines,
    in a process of its own (its files stay after it exits, as a dead worker's do)."""
    models = max(1, lines // (LINES_PER_MODEL * PROVIDERS))
    code = f"""
from app import metrics, telemetry
from app.settings import Settings
telemetry.set_default(telemetry.Telemetry(Settings(label_cap=100_000, series_cap=1_000_000)))
for p in range({PROVIDERS}):
    for m in range({models}):
        metrics.record_upstream_call(f"provider-{{p}}", f"model-{{m}}", duration_s=0.4)
        metrics.record_tokens_used(f"provider-{{p}}", f"model-{{m}}", 100, 300)
        metrics.record_credits_used(f"provider-{{p}}", f"model-{{m}}", "user", 0.5)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})


def gateway_app():  # noqa: ANN201 - the uvicorn factory of both parts
    from app import metrics
    from app.main import create_app

    app = create_app()
    models = int(os.environ.get("SCRAPE_STALL_MODELS", "0"))
    for p in range(PROVIDERS):  # part 1: the registry filled in the gateway's own process
        for m in range(models):
            metrics.record_upstream_call(f"provider-{p}", f"model-{m}", duration_s=0.4)
            metrics.record_tokens_used(f"provider-{p}", f"model-{m}", 100, 300)
            metrics.record_credits_used(f"provider-{p}", f"model-{m}", "user", 0.5)

    @app.get("/v1/route")
    async def route() -> dict[str, bool]:
        return {"ok": True}

    return app


def serve(argv: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{argv} did not start")


def closed_loop(url: str, seconds: float) -> tuple[float, float]:
    """(requests per second, p99 seconds) of one client sending back to back."""
    latencies: list[float] = []
    with httpx.Client(timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            client.get(url)
            latencies.append(time.perf_counter() - started)
    return len(latencies) / seconds, statistics.quantiles(latencies, n=100)[98]


SCRAPER = """
import sys, time, httpx
url, interval, start, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rounds = int(sys.argv[5])
count = 0
with httpx.Client(timeout=60) as client:
    for number in range(1, 2 * rounds, 2):  # the odd windows: scraped
        begin, end = start + number * window, start + (number + 1) * window
        time.sleep(max(0.0, begin - time.time()))
        while time.time() < end - LAST_START_S:
            started = time.time()
            with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as response:
                for _chunk in response.iter_raw():  # as Prometheus: gzip, not decoded here
                    pass
            count += 1
            if interval:
                time.sleep(max(0.0, min(started + interval, end) - time.time()))
print(count)
"""
#: A scrape starts no later than this before its window ends, so it rarely spills into
#: the next (quiet) window.
LAST_START_S = 0.4


def phase(route: str, scrape_url: str, interval: float, window: float, rounds: int
          ) -> tuple[tuple[float, float], tuple[float, float], int]:
    """Quiet and scraped windows of ``window`` seconds, alternated ``rounds`` times (the
    machine's load drifts under both alike): ((req/s, p99) quiet, (req/s, p99) scraped,
    scrapes). The scraper is a process of its own: its work never shares a GIL with the
    measuring client."""
    start = time.time() + 1.0
    code = SCRAPER.replace("LAST_START_S", repr(LAST_START_S))
    scraping = subprocess.Popen([sys.executable, "-c", code, scrape_url, str(interval), repr(start), str(window),
                                 str(rounds)], stdout=subprocess.PIPE, text=True)
    latencies: list[list[float]] = [[], []]
    with httpx.Client(timeout=30) as client:
        for number in range(2 * rounds):
            begin, end = start + number * window, start + (number + 1) * window
            time.sleep(max(0.0, begin - time.time()))
            while time.time() < end:
                started = time.perf_counter()
                client.get(route)
                latencies[number % 2].append(time.perf_counter() - started)
    count = int(scraping.communicate()[0].strip() or 0)
    seconds = window * rounds
    quiet, scraped = ((len(found) / seconds, statistics.quantiles(found, n=100)[98]) for found in latencies)
    return quiet, scraped, count


def phases(route: str, window: float, rounds: int, scrapes: list[tuple[str, str, float]]) -> None:
    """Each (name, scraped url, interval): throughput and p99 against the quiet windows
    around it."""
    closed_loop(route, 1.0)  # warm up
    print(f"| {'phase':44} | {'quiet req/s':>11} | {'req/s':>8} | {'x quiet':>8} | {'quiet p99 ms':>12} "
          f"| {'p99 ms':>8} | {'x quiet':>8} | {'scrapes':>8} |")
    print(f"|{'-' * 46}|{'-' * 12}:|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|")
    for name, scrape_url, interval in scrapes:
        (quiet_rps, quiet_p99), (rps, p99), count = phase(route, scrape_url, interval, window, rounds)
        print(f"| {name:44} | {quiet_rps:11.0f} | {rps:8.0f} | {rps / quiet_rps:8.2f} | {quiet_p99 * 1e3:12.2f} "
              f"| {p99 * 1e3:8.2f} | {p99 / quiet_p99:8.2f} | {count:8} |")


def gateway(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return serve([sys.executable, "-m", "uvicorn", "--factory", "benchmarks.scrape_stall:gateway_app",
                  "--port", str(port), "--log-level", "warning", "--no-access-log"],
                 env, f"http://127.0.0.1:{port}/health")


def base_env() -> dict[str, str]:
    return {**os.environ, "GATEWAY_METRICS_ACCESS_LOG": "false", "GATEWAY_METRICS_LABEL_CAP": "100000",
            "GATEWAY_METRICS_SERIES_CAP": "1000000", "GATEWAY_METRICS_SNAPSHOT_INTERVAL_SECONDS": "300",
            "PYTHONPATH": str(ROOT)}


def part1(lines: int, window: float, rounds: int) -> None:
    models = max(1, lines // (LINES_PER_MODEL * PROVIDERS))
    env = {**base_env(), "SCRAPE_STALL_MODELS": str(models)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = 18931
    process = gateway(env, port)
    try:
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        started = time.perf_counter()
        body = httpx.get(metrics_url, timeout=60).text
        first = time.perf_counter() - started
        started = time.perf_counter()
        httpx.get(metrics_url, timeout=60)
        again = time.perf_counter() - started
        print(f"Part 1: one process, one gateway route, one closed-loop client; {rounds} quiet and {rounds} "
              f"scraped windows of {window:g} s, alternated, per phase; "
              f"registry of {body.count(chr(10)):,} lines ({os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}); one scrape over HTTP: first {first * 1e3:.0f} ms, then {again * 1e3:.0f} ms")
        print()
        phases(f"http://127.0.0.1:{port}/v1/route", window, rounds,
               [("/metrics scraped once a second", metrics_url, 1.0),
                ("/metrics scraped back to back", metrics_url, 0.0)])
    finally:
        process.terminate()
        process.wait()


def part2(lines: int, window: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        fill(directory, lines)
        env = {**base_env(), "PROMETHEUS_MULTIPROC_DIR": directory}
        port, metrics_port = 18933, 18934
        worker = gateway(env, port)
        exporter = serve([sys.executable, "-m", "app.exporter", "--port", str(metrics_port)],
                         env, f"http://127.0.0.1:{metrics_port}/prometheus/metrics/business")
        try:
            body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).text
            print()
            print(f"Part 2: a worker in multiprocess mode and the exporter; registry of {body.count(chr(10)):,} "
                  "lines in the workers' files")
            print()
            phases(f"http://127.0.0.1:{port}/v1/route", window, rounds,
                   [("exporter scraped back to back", f"http://127.0.0.1:{metrics_port}/metrics", 0.0)])
        finally:
            for process in (worker, exporter):
                process.terminate()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=2.0, help="seconds of one quiet or scraped window")
    parser.add_argument("--rounds", type=int, default=5, help="quiet and scraped windows per phase")
    args = parser.parse_args()
    part1(args.lines, args.window, args.rounds)
    part2(args.lines, args.window, args.rounds)


if __name__ == "__main__":
    main()
