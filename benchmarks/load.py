"""Throughput and p99 of a gateway route under load, two uvicorn workers, side by side.

The load of ``tests/integration/test_load.py``, longer: ``--requests`` POSTs to a gateway
route (``tests.support.load.gateway_app``: the HTTP middleware, one upstream inference and
its tokens recorded per call) from a process of its own (an asyncio httpx pool of
``--concurrency`` connections), served by ``--workers`` uvicorn workers in multiprocess
mode with the exporter. Two phases in one run: quiet; then while a real Prometheus scrapes
the exporter every second and two clients read ``/prometheus/metrics/summary`` back to
back. After each phase the exporter's and Prometheus' totals are checked against what was
sent (any difference is printed as LOST). Then one connection sending back to back, with
the workers' socket declared as TCP (``app.cli.declared_tcp``) and as uvicorn binds it.

    .venv/bin/python benchmarks/load.py               # about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_load import exported, in_prometheus  # noqa: E402
from tests.support.load import INPUT_TOKENS, OUTPUT_TOKENS, Gateway, LoadResult, run_load  # noqa: E402
from tests.support.servers import LOOPBACK, ServerError, free_port, poll, start_prometheus  # noqa: E402


def read_summaries(url: str, stop: threading.Event, counts: list[int]) -> None:
    with httpx.Client(timeout=30, trust_env=False) as client:
        while not stop.is_set():
            if client.get(url + "/prometheus/metrics/summary").status_code != 200:
                counts[1] += 1
            counts[0] += 1


def expected(sent: int) -> dict[str, float]:
    return {"requests": sent, "inference": sent, "input": sent * INPUT_TOKENS, "output": sent * OUTPUT_TOKENS}


def row(name: str, load: LoadResult, quiet: LoadResult | None, extra: str) -> str:
    base = quiet or load
    return (f"{name:34} {load.sent:8} {load.per_second:8.0f} {load.per_second / base.per_second:7.2f} "
            f"{load.p50_ms:8.1f} {load.p99_ms:8.1f} {load.p99_ms / base.p99_ms:7.2f}  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        metrics_port = free_port()
        with start_prometheus(tmp, [f"{LOOPBACK}:{metrics_port}"]) as prometheus:
            gateway = Gateway(tmp, workers=args.workers, metrics_port=metrics_port,
                              env={"GATEWAY_METRICS_PROMETHEUS_URL": prometheus.url,
                                   "GATEWAY_METRICS_QUERY_CACHE_SECONDS": "0"})
            try:
                gateway.wait_ready()
                prometheus.wait_until('up{job="gateway-metrics"} == 1', timeout=30)
                run_load(gateway.url, 200, args.concurrency)  # warm up
                print(f"{args.requests:,} calls per phase, {args.concurrency} connections, {args.workers} workers, "
                      f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
                print(f"{'phase':34} {'sent':>8} {'req/s':>8} {'x quiet':>7} {'p50 ms':>8} {'p99 ms':>8} "
                      f"{'x quiet':>7}")
                quiet = run_load(gateway.url, args.requests, args.concurrency, args.time_limit)
                print(row("quiet (Prometheus scraping 1 s)", quiet, None, ""))
                stop, counts = threading.Event(), [0, 0]
                readers = [threading.Thread(target=read_summaries, args=(gateway.url, stop, counts)) for _ in range(2)]
                for reader in readers:
                    reader.start()
                try:
                    busy = run_load(gateway.url, args.requests, args.concurrency, args.time_limit)
                finally:
                    stop.set()
                    for reader in readers:
                        reader.join()
                print(row("+ 2 summary readers back to back", busy, quiet,
                          f"{counts[0]} summaries, {counts[1]} not 200"))
                sent = 200 + quiet.sent + busy.sent
                want = expected(sent)
                got = exported(httpx.get(gateway.exporter_url + "/metrics", timeout=60, trust_env=False).text)
                try:
                    poll(lambda: in_prometheus(prometheus) == want, 30, "Prometheus to have every call")
                except ServerError:
                    print(f"Prometheus has {in_prometheus(prometheus)}")
                    got = in_prometheus(prometheus)
                lost = {name: want[name] - got[name] for name in want if got[name] != want[name]}
                print(f"counted: {sent:,} calls sent, exporter and Prometheus agree exactly"
                      if not lost and not quiet.failed and not busy.failed
                      else f"LOST {lost}, failed {quiet.failed} {busy.failed}")
            finally:
                gateway.stop()
    one_connection(args.workers)


def one_connection(workers: int, requests: int = 300) -> None:
    """Latency of one kept-alive connection: TCP_NODELAY on the workers' connections or not."""
    print()
    print(f"one connection, {requests} calls, {workers} workers")
    print(f"{'workers socket':34} {'sent':>8} {'req/s':>8} {'x ours':>7} {'p50 ms':>8} {'p99 ms':>8} {'x ours':>7}")
    ours = None
    for name, declare in (("declared TCP (gateway-metrics)", True), ("as uvicorn binds it", False)):
        with tempfile.TemporaryDirectory() as tmp_name:
            gateway = Gateway(Path(tmp_name), workers=workers, declare_tcp=declare)
            try:
                gateway.wait_ready()
                run_load(gateway.url, 50, 1)  # warm up
                result = run_load(gateway.url, requests, 1)
                print(row(name, result, ours, ""))
                ours = ours or result
            finally:
                gateway.stop()


if __name__ == "__main__":
    main()
