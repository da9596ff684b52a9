"""app/http_stats.py: lock-free HTTP counts, exact, and freed with the threads that made them."""

from __future__ import annotations

import threading

from app.catalogue import FAMILIES, MULTIPROCESS_MODES
from app.http_stats import HttpStats


def _record_in_threads(stats: HttpStats, threads: int, per_thread: int) -> None:
    def work() -> None:
        for _ in range(per_thread):
            stats.observe("GET", "/v1/chat", 200, 0.01)

    for _ in range(threads):  # one after another: short-lived threads, as a thread pool recycles them
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()


def test_shards_of_ended_threads_are_merged_and_freed() -> None:
    stats = HttpStats()
    _record_in_threads(stats, threads=500, per_thread=3)
    totals = stats.totals()
    assert stats.shard_count() <= 1
    series = totals[("GET", "/v1/chat", "200")]
    assert sum(series[1:]) == 1500
    assert abs(series[0] - 15.0) < 1e-9


def test_counts_stay_exact_while_threads_end_between_scrapes() -> None:
    stats = HttpStats()
    stats.observe("GET", "/v1/chat", 200, 0.01)  # this thread lives on
    for round_ in range(1, 4):
        _record_in_threads(stats, threads=20, per_thread=5)
        assert sum(stats.totals()[("GET", "/v1/chat", "200")][1:]) == 1 + round_ * 100


def test_every_gauge_declares_how_workers_combine() -> None:
    # Derived gauges are not in the files: whatever reads them computes them from the sums.
    gauges = {family.name for family in FAMILIES if family.kind == "gauge" and family.source != "derived"}
    assert gauges == set(MULTIPROCESS_MODES)
    derived = {family.name for family in FAMILIES if family.kind == "gauge" and family.source == "derived"}
    assert derived == {"gatewayz_token_efficiency"}
