"""Summaries at fleet scale: a synthetic fleet served by a small exporter, scraped by the
real Prometheus with the shipped rules loaded, at ~2k, ~20k and ~100k inference bucket
series; for each size, a cold summary (no answer cache) beside its own queries sent
straight to Prometheus, concurrently (the limit), with the recorded series, without them,
and the same queries as the summaries asked before they read every series once ("before":
the per-le buckets computed beside the per-model ones, bucket groups filtered on ``_count``).

    .venv/bin/python benchmarks/summary_scale.py                 # all three sizes, 5 min of data each
    .venv/bin/python benchmarks/summary_scale.py --sizes 2k --fill 60 --scrape-interval 1

The exporter is a process of its own serving every instance's page (``?instance=i``), each
re-rendered every scrape interval with growing counters; Prometheus scrapes each instance as
a target of one job every ``--scrape-interval`` seconds (15, Prometheus' default, unless
told) and evaluates the rules as often. Each size first waits ``--fill`` seconds, so the
5-minute rates read a full window of samples. The summary runs in this process
(app.summary.service.SummaryService, every category, the default 300 s window); the limit is
the same request bodies posted by eight threads (as many as the backend sends a summary's
requests with), timed until the last body is read (the summary first, then the limit
first, in turns).

It also times this process's CPU per summary and per limit (every thread's, which the
limit spends in its HTTP client alone): the difference is what the summary adds in Python.

Then Prometheus' own CPU per summary (its ``process_cpu_seconds_total``): a summary's
queries sent again and again, one summary after the other, for whole scrape intervals (two
or more, 10 s at least), less what Prometheus spent in a quiet stretch as long just before
(ingesting the fleet and evaluating the rules). Under
many dashboards the backend's CPU, not one summary's latency, is what bounds how many
summaries a second a fleet's Prometheus answers.

Targets on two cores: the summary within 1.1x of its limit at every size; with the rules,
under 100 ms p95 at ~100k bucket series; without them, at least 1.6x faster than before.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.catalogue import INFERENCE_BUCKETS, TTFT_BUCKETS, Category  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.summary.promql import SUMMARY_QUERIES, Kind, Query  # noqa: E402
from app.summary.service import FLEET_PACK, SummaryService, backend_from_settings  # noqa: E402
from app.telemetry import Telemetry  # noqa: E402
from tests.support.servers import free_port, poll, start_prometheus  # noqa: E402

RULES = ROOT / "deploy" / "prometheus" / "rules" / "recording.yml"
#: (instances, providers, models): inference bucket series = product x 13 (12 bounds and +Inf).
SIZES: dict[str, tuple[int, int, int]] = {"2k": (4, 4, 10), "20k": (8, 8, 24), "100k": (16, 8, 60)}
STATUSES = ("success", "server_error", "rate_limit_error")
JOB = "gateway-metrics"


# --- the synthetic fleet ---------------------------------------------------------------


def _histogram(name: str, labels: str, bounds: tuple[float, ...], per_second: float, t: float) -> list[str]:
    lines = []
    for index, bound in enumerate((*bounds, float("inf"))):
        share = min(1.0, (index + 1) / (len(bounds) * 0.6))
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {per_second * share * t:.1f}')
    lines.append(f"{name}_sum{{{labels}}} {per_second * t * 1.7:.3f}")
    lines.append(f"{name}_count{{{labels}}} {per_second * t:.1f}")
    return lines


def render(instance: int, providers: int, models: int, t: float) -> bytes:
    """One instance's page at ``t`` seconds: counters growing at fixed rates."""
    lines = []
    for p in range(providers):
        provider = f"provider-{p}"
        lines += _histogram("provider_response_time_seconds", f'provider="{provider}"', INFERENCE_BUCKETS,
                            2.0 + p, t)
        lines.append(f'gatewayz_cost_by_provider{{provider="{provider}"}} {0.01 * t:.3f}')
        for m in range(models):
            labels = f'provider="{provider}",model="model-{m}"'
            rate = 0.05 + 0.01 * ((instance + p + m) % 7)
            lines += _histogram("model_inference_duration_seconds", labels, INFERENCE_BUCKETS, rate, t)
            lines += _histogram("gatewayz_time_to_first_token_seconds", labels, TTFT_BUCKETS, rate / 2, t)
            for s, status in enumerate(STATUSES):
                lines.append(f'model_inference_requests_total{{{labels},status="{status}"}} '
                             f"{rate * t / (1 + 4 * s):.1f}")
            lines.append(f'tokens_used_total{{{labels},token_type="input"}} {rate * 100 * t:.0f}')
            lines.append(f'tokens_used_total{{{labels},token_type="output"}} {rate * 40 * t:.0f}')
            lines.append(f"credits_used_total{{{labels}}} {rate * 0.5 * t:.2f}")
    labels = 'method="POST",endpoint="/v1/chat/completions"'
    lines += _histogram("http_request_duration_seconds", labels, INFERENCE_BUCKETS, 5.0, t)
    lines.append(f'http_requests_total{{{labels},status_code="200"}} {5.0 * t:.0f}')
    lines.append('active_api_keys{status="active"} 42')
    return ("\n".join(lines) + "\n").encode()


def serve_fleet(port: int, instances: int, providers: int, models: int, render_every_s: float) -> None:
    """The exporter: every instance's page, re-rendered every ``render_every_s``."""
    started = time.time() - 3600  # an hour of history in the counters
    pages: dict[int, bytes] = {}

    def refresh() -> None:
        while True:
            t = time.time() - started
            for instance in range(instances):
                pages[instance] = render(instance, providers, models, t)
            time.sleep(render_every_s)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            query = parse_qs(urlsplit(self.path).query)
            body = pages.get(int(query.get("instance", ["0"])[0]), b"")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    for instance in range(instances):
        pages[instance] = render(instance, providers, models, time.time() - started)
    threading.Thread(target=refresh, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def fleet_job(port: int, instances: int) -> dict[str, Any]:
    """One scrape job, one target per synthetic instance, all served by the exporter."""
    return {
        "job": JOB,
        "targets": [f"instance-{i}" for i in range(instances)],
        "relabel_configs": [
            {"source_labels": ["__address__"], "regex": "instance-(.*)", "target_label": "__param_instance"},
            {"source_labels": ["__address__"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": f"127.0.0.1:{port}"},
        ],
    }


# --- the summaries as they were asked before, for the "before" column ------------------


def before_promql(query: Query, window_s: int) -> str:
    text = query.promql(window_s)
    if query.active_only:
        groups = ", ".join(query.by[1:])
        count = Query("", Kind.RATE, query.metric.removesuffix("_bucket") + "_count", query.by[1:])
        text = f"{text} and on ({groups}) ({count.promql(window_s)} > 0)"
    return text


def before_texts(window_s: int, health: Mapping[str, str]) -> dict[str, str]:
    """Every category's pack as the summaries sent it, the per-le buckets beside the per-model ones."""
    texts: dict[str, str] = {}
    seen: set[str] = set()
    for category in Category:
        pack = [query for query in SUMMARY_QUERIES[category] if query.name not in seen]
        seen.update(query.name for query in pack)
        texts[category.value] = " or ".join(
            f'label_replace({before_promql(query, window_s)}, "summary_query", "{query.name}", "", "")'
            for query in pack)
    return {**texts, **health}


# --- measuring --------------------------------------------------------------------------


def send_directly(url: str, texts: Mapping[str, str], at: float, pool: ThreadPoolExecutor,
                  sessions: threading.local) -> float:
    """Milliseconds to post ``texts`` to Prometheus on ``pool``'s threads, until every body is read."""

    def one(text: str) -> int:
        session = getattr(sessions, "session", None)
        if session is None:
            session = sessions.session = requests.Session()
        response = session.post(f"{url}/api/v1/query", data={"query": text, "time": f"{at:.3f}"}, timeout=30)
        response.raise_for_status()
        return len(response.content)

    started = time.perf_counter()
    list(pool.map(one, texts.values()))
    return (time.perf_counter() - started) * 1000


def cuts(latencies: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49], q[94]


def prometheus_cpu_s(url: str) -> float:
    """Prometheus' own CPU seconds so far, from its ``/metrics``."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    raise RuntimeError("Prometheus does not expose process_cpu_seconds_total")


def cpu_per_summary(url: str, texts: Mapping[str, str], span_s: float) -> float:
    """Prometheus CPU ms per summary: ``texts`` (one summary's queries, concurrently) sent
    one summary after the other for at least ``span_s``, less the CPU of a quiet stretch
    as long just before. Each stretch spans whole scrape and rule cycles (``span_s`` is a
    multiple of the interval), or whether an ingest lands in it decides the figure."""
    with ThreadPoolExecutor(8) as pool:
        sessions = threading.local()
        started, cpu = time.perf_counter(), prometheus_cpu_s(url)
        time.sleep(span_s)
        quiet_s, quiet_cpu = time.perf_counter() - started, prometheus_cpu_s(url) - cpu
        started, cpu = time.perf_counter(), prometheus_cpu_s(url)
        sent = 0
        while sent == 0 or time.perf_counter() - started < span_s:
            send_directly(url, texts, time.time(), pool, sessions)
            sent += 1
        busy_s, busy_cpu = time.perf_counter() - started, prometheus_cpu_s(url) - cpu
    return max(0.0, busy_cpu - quiet_cpu * busy_s / quiet_s) * 1000 / sent


def measure(service: SummaryService, url: str, requests_n: int, before: bool, span_s: float) -> dict[str, Any]:
    """p50/p95 ms of the cold summary and of its limit (its own texts sent directly), and
    Prometheus' CPU per summary (``cpu``, and ``before_cpu`` for the queries asked before)."""
    assert service.backend is not None
    sent: dict[str, str] = {}
    query_many: Callable[..., Any] = service.backend.query_many

    def recording(texts: Mapping[str, str], *args: Any, **kwargs: Any) -> Any:
        sent.clear()
        sent.update(texts)
        return query_many(texts, *args, **kwargs)

    service.backend.query_many = recording  # type: ignore[method-assign]
    summaries: list[float] = []
    limits: list[float] = []
    befores: list[float] = []
    # This process's CPU (every thread's) per summary and per limit: the limit's is its
    # HTTP client alone, the summary's adds reading the answers and building the figures.
    summary_cpu: list[float] = []
    limit_cpu: list[float] = []
    categories = list(Category)

    def limit() -> None:
        cpu = time.process_time()
        limits.append(send_directly(url, sent, time.time(), pool, sessions))
        limit_cpu.append((time.process_time() - cpu) * 1000)

    with ThreadPoolExecutor(8) as pool:
        sessions = threading.local()
        service.summary_json(categories)  # the texts a summary sends, for a limit sent first
        for number in range(requests_n):
            # Which goes first alternates: the second may find what the first read warm.
            if number % 2:
                limit()
            started, cpu = time.perf_counter(), time.process_time()
            answer = service.summary_json(categories)
            summaries.append((time.perf_counter() - started) * 1000)
            summary_cpu.append((time.process_time() - cpu) * 1000)
            if b'"errors":[]' not in answer:
                raise RuntimeError(f"the summary reports errors: {answer[:600]!r}")
            if not number % 2:
                limit()
            if before:
                texts = before_texts(service.settings.summary_window_seconds, {FLEET_PACK: sent[FLEET_PACK]})
                befores.append(send_directly(url, texts, time.time(), pool, sessions))
    service.backend.query_many = query_many  # type: ignore[method-assign]
    result: dict[str, Any] = {"summary": cuts(summaries), "limit": cuts(limits),
                              "summary_cpu": statistics.median(summary_cpu), "limit_cpu": statistics.median(limit_cpu)}
    result["cpu"] = cpu_per_summary(url, dict(sent), span_s)
    if before:
        result["before"] = cuts(befores)
        before_pack = before_texts(service.settings.summary_window_seconds, {FLEET_PACK: sent[FLEET_PACK]})
        result["before_cpu"] = cpu_per_summary(url, before_pack, span_s)
    return result


def run_size(name: str, fill_s: float, requests_n: int, interval_s: float) -> dict[str, Any]:
    import multiprocessing

    instances, providers, models = SIZES[name]
    cpu_span_s = 2 * interval_s * math.ceil(10.0 / (2 * interval_s))  # whole cycles, 10 s at least
    port = free_port()
    exporter = multiprocessing.Process(target=serve_fleet, args=(port, instances, providers, models, interval_s),
                                       daemon=True)
    exporter.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                start_prometheus(tmp, [fleet_job(port, instances)], rule_files=[RULES], job=JOB,
                                 scrape_interval=f"{interval_s:g}s") as prometheus:
            buckets = instances * providers * models * (len(INFERENCE_BUCKETS) + 1)
            print(f"{name}: {instances} instances x {providers} providers x {models} models: {buckets} "
                  f"inference bucket series, scraped every {interval_s:g} s; filling {fill_s:.0f} s", flush=True)
            time.sleep(fill_s)  # a benchmark, not a test: the 5-minute window fills with real scrapes
            poll(lambda: prometheus.query(
                "count(job_provider_model_le:model_inference_duration_seconds_bucket:rate5m)")["result"],
                max(120.0, 4 * interval_s), "the recorded series")
            settings = Settings(prometheus_url=prometheus.url, query_cache_seconds=0, query_deadline_seconds=30,
                                access_log=False)
            telemetry = Telemetry(settings)
            service = SummaryService(settings, telemetry.snapshots, backend_from_settings(settings),
                                     tracker=telemetry.tracker, top_lists=telemetry.top_lists)
            try:
                assert service.rules is not None
                usable = service.rules.refresh()
                service.summary(list(Category))  # connections, imports
                with_rules = measure(service, prometheus.url, requests_n, before=False, span_s=cpu_span_s)
                recorded = service.summary(list(Category)).recorded_queries
                service.rules = None
                without_rules = measure(service, prometheus.url, requests_n, before=True, span_s=cpu_span_s)
            finally:
                service.close()
            return {"name": name, "buckets": buckets, "usable": sorted(usable),
                    "recorded": recorded, "rules": with_rules, "raw": without_rules}
    finally:
        exporter.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2k,20k,100k", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--fill", type=float, default=300.0, help="seconds of scrapes before measuring")
    parser.add_argument("--requests", type=int, default=30, help="summaries per case")
    parser.add_argument("--scrape-interval", type=float, default=15.0,
                        help="seconds between scrapes and between rule evaluations")
    args = parser.parse_args()
    rows = []
    for name in args.sizes.split(","):
        rows.append(run_size(name, args.fill, args.requests, args.scrape_interval))
        print(f"{name}: {rows[-1]}", flush=True)
    print("\ncold summary (every category, 300 s window), p50 / p95 ms; limit: its own queries sent directly")
    print("| inference bucket series | with rules: summary | limit | ratio p50 | without rules: summary | limit "
          "| ratio p50 | before (its queries sent directly) | before / without rules, p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        rules, raw = row["rules"], row["raw"]

        def pair(cell: tuple[float, float]) -> str:
            return f"{cell[0]:,.1f} / {cell[1]:,.1f}"

        print(f"| {row['buckets']:,} | {pair(rules['summary'])} | {pair(rules['limit'])} "
              f"| {rules['summary'][0] / rules['limit'][0]:.2f}x | {pair(raw['summary'])} | {pair(raw['limit'])} "
              f"| {raw['summary'][0] / raw['limit'][0]:.2f}x | {pair(raw['before'])} "
              f"| {raw['before'][0] / raw['summary'][0]:.2f}x |")
    print(f"\nPrometheus CPU per cold summary, ms (its queries sent one summary after the other, less a quiet "
          f"stretch), scraped every {args.scrape_interval:g} s")
    print("| inference bucket series | with rules | without rules | before | before / without rules |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        rules, raw = row["rules"], row["raw"]
        print(f"| {row['buckets']:,} | {rules['cpu']:,.1f} | {raw['cpu']:,.1f} | {raw['before_cpu']:,.1f} "
              f"| {raw['before_cpu'] / max(raw['cpu'], 1e-9):.2f}x |")
    print("\nThis process's CPU per cold summary, ms (median; every thread): the summary, its limit's HTTP "
          "client, and what the summary adds (reading the answers, building the figures)")
    print("| inference bucket series | with rules: summary | limit | added | without rules: summary | limit | added |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        rules, raw = row["rules"], row["raw"]
        print(f"| {row['buckets']:,} | {rules['summary_cpu']:,.1f} | {rules['limit_cpu']:,.1f} "
              f"| {rules['summary_cpu'] - rules['limit_cpu']:,.1f} | {raw['summary_cpu']:,.1f} "
              f"| {raw['limit_cpu']:,.1f} | {raw['summary_cpu'] - raw['limit_cpu']:,.1f} |")
    for row in rows:
        print(f"{row['name']}: recorded queries read: {', '.join(row['recorded']) or 'none'}")


if __name__ == "__main__":
    main()
