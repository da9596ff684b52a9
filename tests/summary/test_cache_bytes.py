"""The caches requests fill stay within their byte budgets, whatever the requests ask for
(memory figures: benchmarks/summary_memory.py)."""

from __future__ import annotations

import gc
import itertools
import json
import tracemalloc
from collections.abc import Iterator

import pytest
from cachetools import LRUCache
from support.faulty_backend import FaultyBackend, Reply, envelope
from support.model_fleet import ModelFleet

from app.catalogue import Category
from app.scoring import HealthTracker
from app.settings import Settings
from app.summary.backend import PrometheusBackend, parse_response, result_nbytes
from app.summary.caches import bounded, keep
from app.summary.service import PACKED_LABELS, SummaryService
from app.summary.snapshots import Snapshots
from app.topn import TopLists


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def varied_requests(count: int) -> Iterator[tuple[list[Category], int]]:
    """Distinct (categories, window) pairs: the models category in most, windows all apart."""
    subsets = [[Category.MODELS], list(Category), [Category.PROVIDERS, Category.MODELS], [Category.SYSTEM],
               [Category.BUSINESS, Category.PERFORMANCE]]
    for index, categories in zip(range(count), itertools.cycle(subsets)):
        yield categories, 10 + index


def fleet_service(answer_cache_bytes: int, models: int = 60) -> SummaryService:
    """Local summaries of ``models`` models, with an answer cache of ``answer_cache_bytes``."""
    clock, fleet = Clock(), ModelFleet(models)
    fleet.record_calls()
    snapshots = Snapshots(fleet.registry, clock=clock)
    snapshots.take()
    fleet.record_calls()
    clock.now = 600.0
    # A TTL no test outlives: entries leave by the byte bound alone.
    settings = Settings(query_cache_seconds=3600)
    return SummaryService(settings, snapshots, tracker=HealthTracker(), top_lists=TopLists(),
                          answer_cache_bytes=answer_cache_bytes)


# --- the summary's answers ------------------------------------------------------------------


def test_answer_cache_holds_no_more_bytes_than_its_budget() -> None:
    budget = 64 * 1024
    service = fleet_service(budget)
    asked: list[tuple[list[Category], int]] = []
    for categories, window in varied_requests(60):
        answer = service.summary_json(categories, window, local=True)
        asked.append((categories, window))
        kept = [service.cached_json(c, w, local=True) for c, w in asked]
        assert sum(len(body) for body in kept if body is not None) <= budget
        assert service.cached_json(categories, window, local=True) == answer  # the newest one stays
    still_kept = sum(service.cached_json(c, w, local=True) is not None for c, w in asked)
    assert 1 < still_kept < len(asked)


def test_answer_bigger_than_the_budget_is_served_and_not_cached() -> None:
    service = fleet_service(answer_cache_bytes=4096)
    answer = service.summary_json(list(Category), 300, local=True)
    assert len(answer) > 4096
    assert json.loads(answer)["metrics"]["models"]["models"]
    assert service.cached_json(list(Category), 300, local=True) is None
    small = service.summary_json([Category.SYSTEM], 300, local=True)
    assert len(small) < 4096 and service.cached_json([Category.SYSTEM], 300, local=True) == small


# --- the backend's answers ------------------------------------------------------------------


def vector(series: int) -> bytes:
    """A backend answer of ``series`` samples, about 500 bytes each once parsed."""
    return envelope(result=[{"metric": {"provider": "p", "model": f"m{n}", "le": "0.5"}, "value": [0, "1"]}
                            for n in range(series)])


@pytest.fixture
def fake() -> Iterator[FaultyBackend]:
    with FaultyBackend() as fake:
        yield fake


def test_backend_store_holds_no_more_bytes_than_its_budget(fake: FaultyBackend) -> None:
    budget = 256 * 1024
    with PrometheusBackend(fake.url, max_cache_bytes=budget, clock=Clock()) as backend:
        for n, series in zip(range(40), itertools.cycle((5, 120, 300, 40))):
            fake.reply = Reply(body=vector(series))
            batch = backend.query_many({"q": f"vector({n})"})
            assert batch.errors == [] and len(batch.results["q"].samples) == series
            assert 0 < backend.cached_bytes <= budget
        served = fake.request_count
        backend.query_many({"q": "vector(39)"})  # the newest answer is still kept
        assert fake.request_count == served


def test_backend_answer_bigger_than_the_budget_is_served_and_not_kept(fake: FaultyBackend) -> None:
    fake.reply = Reply(body=vector(400))
    with PrometheusBackend(fake.url, max_cache_bytes=64 * 1024, clock=Clock()) as backend:
        for expected_requests in (1, 2):
            batch = backend.query_many({"q": "big"})
            assert batch.errors == [] and len(batch.results["q"].samples) == 400
            assert fake.request_count == expected_requests  # asked again: nothing was kept
        assert backend.cached_bytes == 0


@pytest.mark.parametrize("into", [None, PACKED_LABELS], ids=["dicts", "label sets"])
def test_an_answer_is_charged_what_it_holds(into: type | None) -> None:
    body = envelope(result=[{"metric": {"provider": "p", "model": f"model-{n}", "le": "0.5",
                                        "summary_query": "inference_buckets"}, "value": [0, "1"]}
                            for n in range(3000)])
    parse_response(200, body, into=into)  # the decoders made, caches warm
    held = []
    for _ in range(3):  # the least of three: another thread of the suite may allocate meanwhile
        gc.collect()
        tracemalloc.start()
        try:
            answer = parse_response(200, body, into=into)
            held.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    assert 0.9 * min(held) <= result_nbytes(answer) <= 1.1 * min(held)


# --- the caches' rule ---------------------------------------------------------------------


def test_bounded_cache_caps_bytes_and_entries() -> None:
    cache = bounded(LRUCache, max_entries=4, max_bytes=100, nbytes=len)
    for n in range(50):
        keep(cache, n, b"x" * (n % 40))
        assert len(cache) <= 4
        assert sum(len(value) for value in cache.values()) <= 100


def test_keep_refuses_a_value_over_the_budget_and_drops_the_older_one() -> None:
    cache = bounded(LRUCache, max_entries=4, max_bytes=100, nbytes=len)
    assert keep(cache, "k", b"small")
    assert not keep(cache, "k", b"x" * 101)
    assert "k" not in cache
