"""Scrapes of a big registry against the gateway's own requests, side by side in one run.

Part 1 fills a multiprocess directory with about ``--lines`` exposition lines (providers x
models of inference traffic), serves an instrumented gateway route with uvicorn in
multiprocess mode, and drives it with one closed-loop client for ``--seconds`` each:
quiet; while the exporter process (``app.exporter``) is scraped back to back; and, for
contrast, while the worker's own ``/metrics`` is scraped back to back (the single-process
design, where the worker renders). It prints throughput and p99 and their ratios to quiet.

Part 2 times one scrape at 1k, 10k and 100k lines: the exporter's reader
(``app.multiprocess.FilesCollector``, one per family, as the exporter registers them)
against ``prometheus_client.generate_latest`` over client_python's
``MultiProcessCollector`` on the same files, with the files' bytes per series; then each
category endpoint's time beside its share of the lines.

    .venv/bin/python benchmarks/scrape_stall.py            # about a minute

Targets: throughput while the exporter is scraped >= 0.8x quiet, p99 <= 2x quiet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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
telemetry.set_default(telemetry.Telemetry(Settings(label_cap=100_000)))
for p in range({PROVIDERS}):
    for m in range({models}):
        metrics.record_upstream_call(f"provider-{{p}}", f"model-{{m}}", duration_s=0.4)
        metrics.record_tokens_used(f"provider-{{p}}", f"model-{{m}}", 100, 300)
        metrics.record_credits_used(f"provider-{{p}}", f"model-{{m}}", "user", 0.5)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})


def gateway_app():  # noqa: ANN201 - the uvicorn factory of part 1
    from app.main import create_app

    app = create_app()

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


def scrape_loop(url: str, stop: threading.Event, counts: list[int]) -> None:
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            client.get(url)
            counts[0] += 1


def part1(lines: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        fill(directory, lines)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "GATEWAY_METRICS_ACCESS_LOG": "false",
               "GATEWAY_METRICS_LABEL_CAP": "100000", "PYTHONPATH": str(ROOT)}
        port, metrics_port = 18931, 18932
        gateway = serve([sys.executable, "-m", "uvicorn", "--factory", "benchmarks.scrape_stall:gateway_app",
                         "--port", str(port), "--log-level", "warning", "--no-access-log"],
                        env, f"http://127.0.0.1:{port}/health")
        exporter = serve([sys.executable, "-m", "app.exporter", "--port", str(metrics_port)],
                         env, f"http://127.0.0.1:{metrics_port}/prometheus/metrics/business")
        try:
            body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).text
            print(f"Part 1: one gateway route, one closed-loop client, {seconds:g} s per phase; "
                  f"registry of {body.count(chr(10)):,} lines ({os.cpu_count()} cores)")
            route = f"http://127.0.0.1:{port}/v1/route"
            closed_loop(route, 1.0)  # warm up
            quiet_rps, quiet_p99 = closed_loop(route, seconds)
            print(f"{'phase':44} {'req/s':>8} {'x quiet':>8} {'p99 ms':>8} {'x quiet':>8} {'scrapes':>8}")
            print(f"{'quiet':44} {quiet_rps:8.0f} {1:8.2f} {quiet_p99 * 1e3:8.2f} {1:8.2f} {0:8}")
            for name, scrape_url in (("scraped back to back: exporter process", f"http://127.0.0.1:{metrics_port}/metrics"),
                                     ("scraped back to back: the worker's /metrics", f"http://127.0.0.1:{port}/metrics")):
                stop, counts = threading.Event(), [0]
                scraper = threading.Thread(target=scrape_loop, args=(scrape_url, stop, counts))
                scraper.start()
                rps, p99 = closed_loop(route, seconds)
                stop.set()
                scraper.join()
                print(f"{name:44} {rps:8.0f} {rps / quiet_rps:8.2f} {p99 * 1e3:8.2f} {p99 / quiet_p99:8.2f} "
                      f"{counts[0]:8}")
        finally:
            for process in (gateway, exporter):
                process.terminate()
                process.wait()


def part2(repeat: int) -> None:
    code = r"""
import os, sys, time, glob
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from app.catalogue import Category, FAMILIES
from app.multiprocess import FilesCollector, file_metric_name
from app.exposition import render
path = os.environ["PROMETHEUS_MULTIPROC_DIR"]; repeat = int(sys.argv[1])
def best(f):
    times = []
    for _ in range(repeat):
        s = time.perf_counter(); out = f(); times.append(time.perf_counter() - s)
    return min(times), out
from app.collectors import register_files_collectors
from app.registry import MetricSet
metric_set = MetricSet(in_files=True)  # the exporter's registries
register_files_collectors(metric_set, path)
ours = metric_set.all_registry
theirs = CollectorRegistry(); MultiProcessCollector(theirs, path)
ours_s, body = best(lambda: render(ours).body)
theirs_s, _ = best(lambda: generate_latest(theirs))
lines = body.count(b"\n")
series = sum(1 for l in body.splitlines() if not l.startswith(b"#"))
size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "*.db")))
print(f"{lines:>9,} {ours_s*1e3:10.1f} {theirs_s*1e3:10.1f} {ours_s/theirs_s:8.2f} {size/series:10.0f}")
if lines > 50_000:
    print()
    print(f"Category endpoints at {lines:,} lines: time beside the share of lines")
    print(f"{'category':12} {'lines':>9} {'share':>7} {'ms':>9} {'x all':>7}")
    for category in Category:
        reg = metric_set.category_registries[category]
        s, out = best(lambda: render(reg).body)
        n = out.count(b"\n")
        print(f"{category.value:12} {n:9,} {n/lines:7.2f} {s*1e3:9.1f} {s/ours_s:7.2f}")
"""
    print()
    print(f"Part 2: one scrape of every worker's files (best of {repeat})")
    print(f"{'lines':>9} {'ours ms':>10} {'client ms':>10} {'x client':>8} {'bytes/series':>10}")
    for lines in (1_000, 10_000, 100_000):
        with tempfile.TemporaryDirectory() as directory:
            fill(directory, lines)
            subprocess.run([sys.executable, "-c", code, str(repeat)], check=True, cwd=ROOT,
                           env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    part1(args.lines, args.seconds)
    part2(args.repeat)


if __name__ == "__main__":
    main()
