"""Memory and cost of local mode's history, with 2 providers x 500 models recorded.

Fills the process's default telemetry through the public helpers (every model called with a 200,
a 429 and a 500, streamed, with tokens and credits), then measures, side by side in one
run:

- one snapshot: this module's reader against the registry's own ``collect()`` into
  nested dicts (what a snapshot used to be), median of interleaved rounds;
- one uncached local summary of every category (a fresh read, never kept);
- the whole hour of history: 720 snapshots at the default 5 s on a simulated clock, with
  traffic between them, measured with tracemalloc against the old form's per-snapshot
  size times the snapshots the old policy kept.

    .venv/bin/python benchmarks/snapshots.py

Targets on this machine: the hour under 64 MB, one snapshot under 20 ms.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from app import metrics  # noqa: E402
from app import telemetry as telemetry_module  # noqa: E402
from app.catalogue import Category  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.summary.promql import queries_for  # noqa: E402
from app.summary.snapshots import MAX_WINDOW_S, Snapshots  # noqa: E402

#: The old policy: every snapshot of the last 15 minutes at 5 s, one a minute to an hour.
OLD_KEPT = 900 // 5 + (MAX_WINDOW_S - 900) // 60


def fill(providers: int, models: int) -> None:
    for p in range(providers):
        for m in range(models):
            provider, model = f"provider-{p}", f"model-{m}"
            for status in (200, 429, 500):
                metrics.record_upstream_call(provider, model, duration_s=0.2 + m % 7, status_code=status,
                                             ttft_s=0.1 + m % 3)
            metrics.record_tokens_used(provider, model, 100, 40)
            metrics.record_credits_used(provider, model, f"user-{m % 50}", 0.01)


def collect_as_dicts(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A snapshot as it used to be: the whole registry, label pairs sorted, nested dicts."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def timed_ms(action, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def traced_bytes(build):  # type: ignore[no-untyped-def]
    """(what build() returns, the bytes it still holds once built)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        return kept, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", type=int, default=2)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    # The process's default telemetry, with a label cap that keeps every model: the
    # app.metrics helpers record into it.
    telemetry = telemetry_module.Telemetry(Settings(label_cap=max(500, args.models)))
    telemetry_module.set_default(telemetry)
    registry = telemetry.metrics.all_registry
    fill(args.providers, args.models)

    clock_now = [0.0]
    snapshots = Snapshots(registry, clock=lambda: clock_now[0])
    snapshots.take()  # warm: layouts built once, as after the first background snapshot
    samples = sum(len(column.values) for column in snapshots.read().columns.values())
    registry_samples = sum(len(v) for v in collect_as_dicts(registry).values())

    new_ms, old_ms = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same load
        new_ms.append(timed_ms(snapshots.read, 1))
        old_ms.append(timed_ms(lambda: collect_as_dicts(registry), 1))
    new, old = statistics.median(new_ms), statistics.median(old_ms)
    queries = queries_for(list(Category))
    summary_ms = timed_ms(lambda: snapshots.evaluate(queries, 300), max(3, args.rounds // 3))

    _, old_one = traced_bytes(lambda: collect_as_dicts(registry))

    def hour() -> Snapshots:
        history = Snapshots(registry, clock=lambda: clock_now[0])
        for step in range(MAX_WINDOW_S // 5):
            clock_now[0] = step * 5.0
            if step % 12 == 0:  # some traffic every minute: values move, series stay
                metrics.record_upstream_call("provider-0", "model-0", duration_s=0.3)
            history.take()
        return history

    started = time.perf_counter()
    history, hour_bytes = traced_bytes(hour)
    hour_s = time.perf_counter() - started

    print(f"registry: {args.providers} providers x {args.models} models, {registry_samples:,} samples, "
          f"{samples:,} of them read by the summaries")
    print(f"one snapshot:   {new:7.2f} ms   (collect() into nested dicts: {old:7.2f} ms, x{old / new:.1f})"
          "   target < 20 ms")
    print(f"local summary:  {summary_ms:7.2f} ms   (every category, one fresh read, nothing kept)")
    print(f"hour of history: {len(history)} snapshots, {hour_bytes / 2**20:6.1f} MB traced "
          f"({history.nbytes / 2**20:.1f} MB by its own count), built in {hour_s:.1f} s   target < 64 MB")
    print(f"  the old form:  {old_one / 2**20:.1f} MB a snapshot x {OLD_KEPT} kept = "
          f"{old_one * OLD_KEPT / 2**30:.2f} GB (x{old_one * OLD_KEPT / hour_bytes:.0f})")


if __name__ == "__main__":
    main()
