"""One scrape's cost against prometheus_client and against the formatting limit, side by side.

At about 1k, 10k and 100k lines, in one run:

* one process: a registry filled through the helpers (providers x models of inference
  traffic, the series cap raised to hold them), rendered by ``app.render.Renderer`` (the
  prefixes kept by an earlier scrape) against ``prometheus_client.generate_latest`` (and its
  OpenMetrics encoder) over the same registry;
* the exporter: the same traffic recorded by two worker processes into a multiprocess
  directory, rendered from the exporter's registries (``FilesCollector`` per family) against
  ``generate_latest`` over client_python's ``MultiProcessCollector``, once the directory is
  older than its re-listing window (``Directory.RECENT_NS``), as in steady state;
* "the limit": the same sample lines joined from prefixes rendered once, with only the
  values formatted: ``"".join(f"{prefix}{value!r}\\n" ...)`` over lists in memory;

text 0.0.4 and OpenMetrics, with and without gzip (level 1, as the endpoints use it), best
of ``--repeat``. The registries do not change between those scrapes, so ours reuses every
line it kept; the "every series changed" row is the other end: traffic recorded again for
every provider/model pair before each timed scrape (one process), or every value of a
worker's files moved (the exporter), so every block of kept lines is written again. Then
the memory the renderer keeps per series (tracemalloc, one process), and each category
endpoint of the exporter at the largest size beside its share of lines.

    .venv/bin/python benchmarks/scrape_render.py          # about three minutes on 2 cores
    .venv/bin/python benchmarks/scrape_render.py --sizes 100000
    .venv/bin/python benchmarks/scrape_render.py --cpu-per-scrape 100000 --baseline DIR

``--cpu-per-scrape`` measures only the CPU one scrape of /metrics takes in one process (the
registry of benchmarks/scrape_stall.py's part 1), nothing changed, or with the stall
benchmark's route traffic or some inference traffic recorded between scrapes; with
``--baseline DIR`` (holding an ``app`` package: ``git archive HEAD app | tar -x -C DIR``)
the same for that package, in turns with this tree's.

Targets: ours within 3x of the limit at 10k lines and more, in one process and in the
exporter.
"""

from __future__ import annotations

import argparse
import gc
import glob
import gzip
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.catalogue import Category  # noqa: E402
from app.client_internals import read_file_entries  # noqa: E402
from app.collectors import register_files_collectors  # noqa: E402
from app.exposition import GZIP_LEVEL, gzipped  # noqa: E402
from app.multiprocess import Directory  # noqa: E402
from app.registry import MetricSet  # noqa: E402
from app.render import Renderer  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.telemetry import Telemetry  # noqa: E402

PROVIDERS = 8
#: Lines one provider/model pair adds: requests, tokens, credits, the histograms' buckets...
LINES_PER_MODEL = 19
SIZES = (1_000, 10_000, 100_000)

RECORD = """
def record(target, models, providers):
    for p in range(providers):
        for m in range(models):
            provider, model = f"provider-{p}", f"model-{m}"
            target.record_upstream_call(provider, model, duration_s=0.4 + 0.001 * m)
            target.record_tokens_used(provider, model, 100 + m, 300)
            target.record_credits_used(provider, model, "user", 0.5)
"""
namespace: dict[str, Callable[..., None]] = {}
exec(RECORD, namespace)  # noqa: S102 - the same code runs in the worker processes
record = namespace["record"]


def models_for(lines: int) -> int:
    return max(1, lines // (LINES_PER_MODEL * PROVIDERS))


def best(function: Callable[[], object], repeat: int, change: Callable[[], object] | None = None) -> float:
    """The least time of ``repeat`` calls, the garbage collector off (as timeit does),
    each after an untimed ``change()`` when one is given."""
    times = []
    for _ in range(repeat):
        if change is not None:
            change()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        finally:
            gc.enable()
    return min(times)


def limit_of(body: bytes) -> Callable[[], str]:
    """The limit for ``body``: its sample lines from prefixes and values held in lists."""
    prefixes: list[str] = []
    values: list[float] = []
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            cut = line.rindex(" ") + 1
            prefixes.append(line[:cut])
            values.append(float(line[cut:]))
    pairs = list(zip(prefixes, values, strict=True))
    return lambda: "".join(f"{prefix}{value!r}\n" for prefix, value in pairs)


def compare(label: str, ours_chunks: Callable[[bool], list[bytes]], theirs: Callable[[bool], bytes], repeat: int,
            change: Callable[[], object]) -> None:
    """One row per format and compression: ours, prometheus_client's and the limit (the
    gzip rows add ``gzip.compress`` at level 1 to each); then ours in text when every series
    changed since the last scrape (``change()`` before each, untimed). Ours gzipped is the
    endpoints' ``gzipped`` of the renderer's chunks."""

    def ours(openmetrics: bool) -> bytes:
        return b"".join(ours_chunks(openmetrics))

    for openmetrics in (False, True):
        body = ours(openmetrics)
        lines = body.count(b"\n")
        limit = limit_of(body)
        ours_s, limit_s = float("inf"), float("inf")
        for _round in range(3):  # interleaved: the machine's load changes under both alike
            ours_s = min(ours_s, best(lambda om=openmetrics: ours(om), repeat))
            limit_s = min(limit_s, best(limit, repeat))
        theirs_s = best(lambda om=openmetrics: theirs(om), max(1, repeat // 2) if lines > 50_000 else repeat)
        ours_gz = best(lambda om=openmetrics: gzipped(ours_chunks(om)), repeat)
        theirs_gz = theirs_s + best(lambda b=body: gzip.compress(b, GZIP_LEVEL), repeat)
        limit_gz = best(lambda f=limit: gzip.compress(f().encode(), GZIP_LEVEL), repeat)
        fmt = "OpenMetrics" if openmetrics else "text"
        for compressed, (o, t, lim) in ((False, (ours_s, theirs_s, limit_s)), (True, (ours_gz, theirs_gz, limit_gz))):
            print(f"| {label} | {lines:,} | {fmt}{' + gzip' if compressed else ''} | {o * 1e3:.2f} | {t * 1e3:.1f} "
                  f"| {lim * 1e3:.2f} | {o / lim:.2f} | {t / o:.1f} |")
        if not openmetrics:
            changed_s, limit_s = float("inf"), float("inf")
            for _round in range(3):
                changed_s = min(changed_s, best(lambda: ours(False), repeat, change))
                limit_s = min(limit_s, best(limit, repeat))
            print(f"| {label} | {lines:,} | text, every series changed | {changed_s * 1e3:.2f} | {theirs_s * 1e3:.1f} "
                  f"| {limit_s * 1e3:.2f} | {changed_s / limit_s:.2f} | {theirs_s / changed_s:.1f} |")


def one_process(lines: int, repeat: int) -> tuple[int, float]:
    """The in-process rows at about ``lines`` lines; returns (series, bytes kept per series)."""
    settings = Settings(label_cap=100_000, series_cap=1_000_000)
    telemetry = Telemetry(settings)
    record(telemetry, models_for(lines), PROVIDERS)
    registry = telemetry.metrics.all_registry
    renderer = telemetry.metrics.renderer
    renderer.render(registry)  # the first scrape renders the prefixes

    def ours(openmetrics: bool) -> list[bytes]:
        return renderer.chunks(registry, openmetrics)

    def theirs(openmetrics: bool) -> bytes:
        return openmetrics_latest(registry) if openmetrics else generate_latest(registry)  # type: ignore[no-any-return]

    compare("one process", ours, theirs, repeat, lambda: record(telemetry, models_for(lines), PROVIDERS))
    # What a renderer keeps: a fresh one's memory after its first scrape, the body dropped.
    fresh = Renderer()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    body = fresh.render(registry)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    del body
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return series, kept / series


def fill_directory(directory: str, lines: int) -> None:
    """Two worker processes record the same traffic into ``directory`` (every series in two
    files, as with two workers), then exit: their files stay, as a dead worker's do."""
    code = RECORD + f"""
from app.settings import Settings
from app.telemetry import Telemetry
record(Telemetry(Settings(label_cap=100_000, series_cap=1_000_000)), {models_for(lines)}, {PROVIDERS})
"""
    for _worker in range(2):
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": str(ROOT)})


def move_values(directory: str) -> None:
    """Every value of one worker's counter and histogram files moved by one, as that worker's
    traffic would (``MultiProcessValue`` writes them so)."""
    first_worker = sorted(glob.glob(os.path.join(directory, "counter_*.db")))[0].rsplit("_", 1)[1]
    for path in (os.path.join(directory, f"{kind}_{first_worker}") for kind in ("counter", "histogram")):
        if not os.path.exists(path):
            continue
        entries = read_file_entries(path)
        mapped = MmapedDict(path)
        try:
            for key, value, timestamp in entries:
                mapped.write_value(key, value + 1.0, timestamp)
        finally:
            mapped.close()


def exporter(lines: int, repeat: int, categories: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        fill_directory(directory, lines)
        metric_set = MetricSet(in_files=True)  # the exporter's registries
        register_files_collectors(metric_set, directory)
        registry = metric_set.all_registry
        renderer = metric_set.renderer
        renderer.render(registry)
        theirs_registry = CollectorRegistry()
        MultiProcessCollector(theirs_registry, directory)
        # The steady state: the directory's listing is kept once it is older than this.
        time.sleep(Directory.RECENT_NS / 1e9)

        def ours(openmetrics: bool) -> list[bytes]:
            return renderer.chunks(registry, openmetrics)

        def theirs(openmetrics: bool) -> bytes:
            if openmetrics:
                return openmetrics_latest(theirs_registry)  # type: ignore[no-any-return]
            return generate_latest(theirs_registry)

        compare("exporter", ours, theirs, repeat, lambda: move_values(directory))
        if categories:
            all_s = best(lambda: renderer.render(registry), repeat)
            total = renderer.render(registry).count(b"\n")
            print()
            print(f"| category (exporter, {total:,} lines) | lines | share of lines | ms | x all |")
            print("|---|---:|---:|---:|---:|")
            for category in Category:
                category_registry = metric_set.category_registries[category]
                renderer.render(category_registry)
                seconds = best(lambda r=category_registry: renderer.render(r), repeat)
                count = renderer.render(category_registry).count(b"\n")
                print(f"| {category.value} | {count:,} | {count / total:.2f} | {seconds * 1e3:.2f} "
                      f"| {seconds / all_s:.2f} |")


#: One process of --cpu-per-scrape: the registry of benchmarks/scrape_stall.py's part 1 (the
#: gateway app, __MODELS__ models per provider), with the app package of __APP_DIR__; it
#: answers each line of its stdin (a case) with the thread CPU seconds of __SCRAPES__ scrapes.
CPU_WORKER = """
import gc, json, os, random, sys, time
sys.path[:0] = [__APP_DIR__, __ROOT__]
os.environ.update({"GATEWAY_METRICS_ACCESS_LOG": "false", "GATEWAY_METRICS_LABEL_CAP": "100000",
                   "GATEWAY_METRICS_SERIES_CAP": "1000000", "GATEWAY_METRICS_SNAPSHOT_INTERVAL_SECONDS": "300",
                   "SCRAPE_STALL_MODELS": str(__MODELS__)})
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
from starlette.testclient import TestClient
from benchmarks.scrape_stall import PROVIDERS, gateway_app
from app import metrics
from app.exposition import render
application = gateway_app()
telemetry = application.state.telemetry
registry, renderer = telemetry.metrics.all_registry, telemetry.metrics.renderer
client = TestClient(application)
render(registry, None, "gzip", (), renderer)
render(registry, None, "gzip", (), renderer)
pick = random.Random(1)
def route_traffic():  # the stall benchmark's client: requests to a gateway route
    for _ in range(__REQUESTS__):
        client.get("/v1/route")
def inference_traffic():  # a gateway's: inference calls of a few provider/model pairs
    for _ in range(__PAIRS__):
        provider, model = f"provider-{pick.randrange(PROVIDERS)}", f"model-{pick.randrange(__MODELS__)}"
        metrics.record_upstream_call(provider, model, duration_s=pick.random())
        metrics.record_tokens_used(provider, model, pick.randrange(1, 500), pick.randrange(1, 500))
CHANGES = {"unchanged": None, "route": route_traffic, "inference": inference_traffic}
print(json.dumps(render(registry, None, None, (), renderer).body.count(b"\\n")), flush=True)
for line in sys.stdin:
    change, encoding = line.split()
    times = []
    for _ in range(__SCRAPES__):
        if CHANGES[change] is not None:
            CHANGES[change]()
        gc.collect()
        started = time.thread_time()
        render(registry, None, None if encoding == "identity" else encoding, (), renderer)
        times.append(time.thread_time() - started)
    print(json.dumps(times), flush=True)
"""
CPU_CASES = (("unchanged", "identity"), ("unchanged", "gzip"), ("route", "gzip"), ("inference", "gzip"))
CPU_CASE_NAMES = {"unchanged": "nothing changed", "route": "route traffic between scrapes (the stall client's)",
                  "inference": "inference traffic between scrapes (20 provider/model pairs recorded)"}


def cpu_per_scrape(lines: int, baseline: str | None, rounds: int, scrapes: int) -> None:
    """CPU per scrape of /metrics in one process (the thread's CPU: rendering, gzip), for the
    app package of this tree and, when given, of ``baseline`` (a directory holding one:
    ``git archive <commit> app | tar -x -C DIR``): both processes alive at once, measured
    in turns (interleaved), best and median of ``rounds`` x ``scrapes``."""
    import json
    import statistics

    variants = [("this tree", str(ROOT))] + ([("baseline", baseline)] if baseline else [])
    models = models_for(lines)
    workers = {}
    for name, app_dir in variants:
        code = (CPU_WORKER.replace("__APP_DIR__", repr(app_dir)).replace("__ROOT__", repr(str(ROOT)))
                .replace("__MODELS__", str(models)).replace("__SCRAPES__", str(scrapes))
                .replace("__REQUESTS__", "200").replace("__PAIRS__", "20"))
        workers[name] = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
    try:
        sizes = {name: json.loads(worker.stdout.readline()) for name, worker in workers.items()}  # type: ignore[union-attr]
        times: dict[tuple[str, str, str], list[float]] = {}
        for _round in range(rounds):
            for change, encoding in CPU_CASES:
                for name, worker in workers.items():  # in turns: the machine's load weighs on both alike
                    worker.stdin.write(f"{change} {encoding}\n")  # type: ignore[union-attr]
                    worker.stdin.flush()  # type: ignore[union-attr]
                    times.setdefault((name, change, encoding), []).extend(json.loads(worker.stdout.readline()))  # type: ignore[union-attr]
    finally:
        for worker in workers.values():
            worker.stdin.close()  # type: ignore[union-attr]
            worker.wait()
    found = ", ".join(f"{name} {count:,} lines" for name, count in sizes.items())
    print(f"CPU per scrape of /metrics, one process: {found}"
          f"; thread CPU in ms, best and median of {rounds} x {scrapes}, interleaved ({os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f})")
    print()
    print("| case | encoding | " + " | ".join(f"{name} best | {name} median" for name in workers)
          + (" | median x baseline |" if baseline else " |"))
    print("|---|---|" + "---:|---:|" * len(workers) + ("---:|" if baseline else ""))
    for change, encoding in CPU_CASES:
        medians = {name: statistics.median(times[name, change, encoding]) for name in workers}
        cells = " | ".join(f"{min(times[name, change, encoding]) * 1e3:.1f} | {medians[name] * 1e3:.1f}"
                           for name in workers)
        ratio = f" | {medians['this tree'] / medians['baseline']:.2f} |" if baseline else " |"
        print(f"| {CPU_CASE_NAMES[change]} | {encoding} | {cells}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--cpu-per-scrape", type=int, metavar="LINES",
                        help="only the CPU per scrape of /metrics at about LINES lines, one process (the "
                             "registry of scrape_stall.py), with and without traffic between scrapes")
    parser.add_argument("--baseline", metavar="DIR",
                        help="with --cpu-per-scrape: also the app package in DIR, measured in turns with this tree's")
    parser.add_argument("--rounds", type=int, default=5, help="with --cpu-per-scrape: turns of each case")
    args = parser.parse_args()
    if args.cpu_per_scrape:
        cpu_per_scrape(args.cpu_per_scrape, args.baseline, args.rounds, args.repeat)
        return
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; ours and the limit: best of "
          f"3 x {args.repeat}, interleaved; times in ms; x limit = ours / limit; x faster = prometheus_client / ours "
          "(generate_latest in one process, over MultiProcessCollector for the exporter)")
    print()
    print("| registry | lines | format | ours | prometheus_client | the limit | x limit | x faster |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    memory: list[tuple[int, float]] = []
    for lines in args.sizes:
        memory.append(one_process(lines, args.repeat))
        exporter(lines, args.repeat, categories=lines == max(args.sizes))
    print()
    print("| series (one process) | bytes kept per series |")
    print("|---:|---:|")
    for series, per_series in memory:
        print(f"| {series:,} | {per_series:.0f} |")


if __name__ == "__main__":
    main()
