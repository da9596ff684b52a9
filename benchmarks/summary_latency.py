"""Latency of GET /prometheus/metrics/summary against a real Prometheus holding an hour
of gateway data, with a cold and with a warm query cache.

The hour is simulated demo traffic backfilled with ``promtool tsdb
create-blocks-from openmetrics`` (tests/support/backfill.py) rather than waited for.
The service runs as its console script in a process of its own; a concurrent httpx
client in this process sends the requests over loopback, and the script prints
p50/p95/p99 for each case.

    .venv/bin/python benchmarks/summary_latency.py          # scripts/setup.sh test first

Targets on this machine's two cores: p95 under 50 ms cold, under 5 ms warm.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.backfill import create_blocks  # noqa: E402
from tests.support.servers import start_prometheus, start_service  # noqa: E402

SUMMARY = "/prometheus/metrics/summary"


def backfill(tmp: Path, seconds: int) -> Path:
    openmetrics = tmp / "gateway.om"
    subprocess.run(
        [sys.executable, "-m", "tests.support.backfill", "--out", str(openmetrics), "--seconds", str(seconds),
         "--step", "10", "--end", str(int(time.time()) - 5)],
        check=True, cwd=ROOT, timeout=900,
    )
    data = tmp / "tsdb"
    create_blocks(openmetrics, data)
    return data


async def measure(url: str, requests: int, concurrency: int) -> list[float]:
    """Milliseconds per request, ``concurrency`` requests in flight at a time."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            response = await http.get(SUMMARY)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200 or response.json()["errors"]:
                raise RuntimeError(f"bad answer: {response.status_code} {response.text[:300]}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, trust_env=False) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return latencies


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3600, help="simulated history to backfill")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        data = backfill(tmp, args.seconds)
        print(f"backfilled {args.seconds} s of demo traffic in {time.perf_counter() - started:.1f} s")
        with start_prometheus(tmp, targets=[], data_dir=data) as prometheus:
            points = prometheus.query("count_over_time(gatewayz_routing_decisions_total[2h])")["result"]
            print(f"Prometheus holds {len(points)} routing series, {points[0]['value'][1]} points each")
            rows = []
            for case, cache_s in (("cold cache (every request queries Prometheus)", 0.0),
                                  ("warm cache (TTL 600 s)", 600.0)):
                env = {
                    "GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
                    "GATEWAY_METRICS_QUERY_CACHE_SECONDS": str(cache_s),
                    "GATEWAY_METRICS_QUERY_DEADLINE_SECONDS": "5",
                    "GATEWAY_METRICS_ACCESS_LOG": "false",
                }
                service = start_service(tmp, env=env, recipe=False)
                try:
                    asyncio.run(measure(service.url, 20, 2))  # connections, imports, a first fill
                    latencies = asyncio.run(measure(service.url, args.requests, args.concurrency))
                finally:
                    service.stop()
                rows.append((case, *percentiles(latencies)))
    print(f"\nGET {SUMMARY} (all categories), {args.requests} requests, {args.concurrency} concurrent")
    print(f"{'case':50} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for case, p50, p95, p99 in rows:
        print(f"{case:50} {p50:8.1f} {p95:8.1f} {p99:8.1f}")


if __name__ == "__main__":
    main()
