"""Memory a flood of distinct summaries leaves behind: 300 local summaries, each with its
own ``window_seconds`` and a mix of categories, over 1,000 models, with the answer cache
bounded in bytes (the service's default budget) and bounded in entries only (256
answers, whatever their size), each case in a fresh process.

    .venv/bin/python benchmarks/summary_memory.py
    .venv/bin/python benchmarks/summary_memory.py --models 1000 --requests 300

Growth is measured after the requests, the garbage collected, against the same process
before them (after a warm-up on a service of its own): the resident set (RSS) and what
tracemalloc still traces. Target: under 40 MB with the byte bound.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.model_fleet import ModelFleet  # noqa: E402

from app.catalogue import Category  # noqa: E402
from app.scoring import HealthTracker  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.summary.service import ANSWER_CACHE_BYTES, SummaryService  # noqa: E402
from app.summary.snapshots import MAX_WINDOW_S, Snapshots  # noqa: E402
from app.topn import TopLists  # noqa: E402

#: Bytes the "entries only" case allows: more than 256 answers of any size take.
UNBOUNDED = 2**62
CASES = {"bytes": ANSWER_CACHE_BYTES, "entries": UNBOUNDED}
MB = 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def requests_of(count: int, seed: int = 7) -> list[tuple[list[Category], int]]:
    """``count`` (categories, window) pairs, every window distinct, the categories a random
    non-empty subset (the models category in about half of them)."""
    rng = random.Random(seed)
    windows = rng.sample(range(10, MAX_WINDOW_S + 1), count)
    return [(rng.sample(list(Category), rng.randint(1, len(Category))), window) for window in windows]


def measure(case: str, models: int, count: int) -> dict[str, float]:
    clock, fleet = Clock(), ModelFleet(models)
    fleet.record_calls()
    snapshots = Snapshots(fleet.registry, clock=clock)
    snapshots.take()
    fleet.record_calls()
    clock.now = float(MAX_WINDOW_S + 100)
    # A TTL longer than the run, so answers leave the cache by its bounds, not by age.
    settings = Settings(query_cache_seconds=3600)

    def service() -> SummaryService:
        return SummaryService(settings, snapshots, tracker=HealthTracker(), top_lists=TopLists(),
                              answer_cache_bytes=CASES[case])

    warm = service()  # imports, lazy tables, the snapshots' query plans
    for categories, window in requests_of(5, seed=1):
        warm.summary_json(categories, window, local=True)
    del warm
    requests = requests_of(count)
    gc.collect()
    tracemalloc.start()
    rss_before, traced_before = rss_bytes(), tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    subject = service()
    served = sum(len(subject.summary_json(categories, window, local=True)) for categories, window in requests)
    elapsed = time.perf_counter() - started
    gc.collect()
    rss_after, traced_after = rss_bytes(), tracemalloc.get_traced_memory()[0]
    kept = [subject.cached_json(categories, window, local=True) for categories, window in requests]
    return {
        "rss_mb": (rss_after - rss_before) / MB,
        "traced_mb": (traced_after - traced_before) / MB,
        "served_mb": served / MB,
        "kept": sum(body is not None for body in kept),
        "kept_mb": sum(len(body) for body in kept if body is not None) / MB,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.models, args.requests)))
        return
    rows = {}
    for case in ("entries", "bytes"):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--models", str(args.models),
                              "--requests", str(args.requests)], check=True, capture_output=True, text=True)
        rows[case] = json.loads(out.stdout.splitlines()[-1])
    print(f"{args.requests} local summaries (distinct windows, mixed categories) over {args.models} models, "
          f"{rows['bytes']['served_mb']:.1f} MB of JSON served")
    print(f"{'answer cache':36} {'RSS +MB':>8} {'traced +MB':>10} {'kept':>5} {'kept MB':>8} {'s':>6}")
    labels = {"entries": "256 entries, any size", "bytes": f"256 entries and {ANSWER_CACHE_BYTES / MB:g} MiB"}
    for case in ("entries", "bytes"):
        row = rows[case]
        print(f"{labels[case]:36} {row['rss_mb']:8.1f} {row['traced_mb']:10.1f} {row['kept']:5d} "
              f"{row['kept_mb']:8.1f} {row['seconds']:6.1f}")
    print(f"growth with the byte bound / without: {rows['bytes']['traced_mb'] / rows['entries']['traced_mb']:.2f}")


if __name__ == "__main__":
    main()
