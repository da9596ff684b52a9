"""Answering a summary: from the Prometheus backend when one is configured and answers,
from this process's registry otherwise, never with an error status.

With a backend, each category's named queries travel as one packed request
(app.summary.promql.packed_promql), the categories in parallel under one deadline
(app.summary.backend), all evaluated at one instant, the summary's ``timestamp``. A figure
that is a sum of another one of the summary is summed here rather than asked for
(app.summary.promql.DERIVED), and figures the shipped recording rules hold for the
window are read from their series while the backend evaluates them (app.summary.rules).
Each answer is read as it arrives, and each category built as soon as the answers it
reads are in (:class:`_Answers`), while the later answers are still on their way.
A request that fails is answered from its last good value (``stale: true``) or, when it
never had one, from the local registry, and ``errors`` says which and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from cachetools import TTLCache
from pydantic import SecretStr

from app.catalogue import Category
from app.scoring import HealthTracker
from app.settings import Settings
from app.summary.backend import BackendError, PrometheusBackend, QueryResult
from app.summary.caches import bounded, keep
from app.summary.figures import CategorySummary, HealthFigures, ModelTable, build_category, build_metrics
from app.summary.fleet_health import FLEET_HEALTH_QUERIES, fleet_health
from app.summary.labelsets import label_set
from app.summary.models import BackendReadiness, Summary, SummaryError, SummarySource
from app.summary.promql import (
    DERIVED,
    PACK_LABEL,
    SUMMARY_QUERIES,
    Matcher,
    Query,
    Recorded,
    derive,
    packed_promql,
    packs_for,
    queries_for,
    unpack,
)
from app.summary.quantiles import Result
from app.summary.rules import RecordingRules
from app.summary.snapshots import Snapshots
from app.topn import TopLists

FLEET_PACK = "fleet_health"
#: Answers kept at most, and their serialized bytes at most. A dashboard polls a few views
#: (categories x windows); a summary of all categories for 1,000 models is about 330 kB of
#: JSON, so 16 MiB keeps some 50 of the biggest answers, ample for those views, while
#: callers asking for hundreds of distinct windows cannot grow the process by more
#: (benchmarks/summary_memory.py).
ANSWER_CACHE_ENTRIES = 256
ANSWER_CACHE_BYTES = 16 * 2**20
#: Every query a summary or the fleet health may run, by name.
ALL_QUERIES: dict[str, Query] = {
    query.name: query for queries in (*SUMMARY_QUERIES.values(), FLEET_HEALTH_QUERIES) for query in queries
}
#: The labels the packed answers are read by (app.summary.labelsets): the labels each query
#: sums by, and the pack's own. Every other label of a series is dropped.
PACKED_LABELS = label_set(frozenset({PACK_LABEL, *(label for query in ALL_QUERIES.values() for label in query.by)}))
#: The recorded series the summaries can read.
SUMMARY_RECORDS: frozenset[Recorded] = frozenset(
    query.recorded for query in ALL_QUERIES.values() if query.recorded is not None
)


def local_health(tracker: HealthTracker) -> dict[str, HealthFigures]:
    """The providers' health from this process's tracker."""
    return {
        health.provider: HealthFigures(
            score=health.score,
            state=str(health.state),
            circuit=str(health.circuit),
            availability=health.availability,
        )
        for health in tracker.snapshot()
    }


def backend_from_settings(settings: Settings) -> PrometheusBackend | None:
    if not settings.prometheus_url:
        return None
    basic_auth: tuple[str, str | SecretStr] | None = None
    if settings.prometheus_username is not None:
        basic_auth = (settings.prometheus_username, settings.prometheus_password or "")
    return PrometheusBackend(
        settings.prometheus_url,
        # Passed as secrets, not values: one read from a file is read again when it changes.
        bearer_token=settings.prometheus_bearer_token,
        basic_auth=basic_auth,
        verify_tls=settings.prometheus_ca_bundle or settings.prometheus_verify_tls,
        deadline_s=settings.query_deadline_seconds,
        cache_ttl_s=settings.query_cache_seconds,
        # Sums of rates and gauges are finite: NaN or an infinity is a backend talking nonsense.
        finite_only=True,
    )


def summary_errors(errors: list[BackendError]) -> list[SummaryError]:
    """The backend's errors, one entry per distinct failure (a down backend fails every
    query the same way), naming the queries concerned."""
    merged: dict[tuple[str, str, int | None], list[str]] = {}
    for error in errors:
        merged.setdefault((error.kind, error.message, error.status), []).append(error.query or "")
    return [
        SummaryError(kind=kind, message=message, status=status, query=", ".join(q for q in queries if q) or None)
        for (kind, message, status), queries in merged.items()
    ]


class SummaryService:
    """The summaries and fleet health of one app: from its backend, or from its own
    snapshots, tracker and top-N tables."""

    def __init__(
        self,
        settings: Settings,
        snapshots: Snapshots,
        backend: PrometheusBackend | None = None,
        *,
        tracker: HealthTracker,
        top_lists: TopLists,
        answer_cache_bytes: int = ANSWER_CACHE_BYTES,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.backend = backend
        self.tracker = tracker
        self.top_lists = top_lists
        self.extra_matchers: tuple[Matcher, ...] = (
            (Matcher("job", "=", settings.prometheus_job),) if settings.prometheus_job else ()
        )
        # Whole answers, for as long as the query results they were built from: a
        # dashboard polling every few seconds costs one JSON copy, not 30 queries.
        self._answers: TTLCache[tuple[object, ...], bytes] | None = (
            bounded(TTLCache, max_entries=ANSWER_CACHE_ENTRIES, max_bytes=answer_cache_bytes, nbytes=len,
                    ttl=settings.query_cache_seconds)
            if settings.query_cache_seconds > 0 else None
        )
        self._answers_lock = threading.Lock()
        self.rules: RecordingRules | None = (
            RecordingRules(backend, SUMMARY_RECORDS, job=settings.prometheus_job) if backend is not None else None
        )
        self._instant: tuple[float, float] | None = None  # (Unix seconds, monotonic when chosen)
        self._instant_lock = threading.Lock()

    def cached_json(self, categories: list[Category], window_s: int | None = None, local: bool = False) -> bytes | None:
        """A summary answered less than ``query_cache_seconds`` ago, if any (never blocks
        on I/O, so the route can try it on the event loop)."""
        if self._answers is None:
            return None
        with self._answers_lock:
            return self._answers.get((tuple(categories), window_s, local))

    def summary_json(self, categories: list[Category], window_s: int | None = None, local: bool = False) -> bytes:
        """The summary as JSON bytes, reused for ``query_cache_seconds`` (unless it alone
        is bigger than the answer cache's budget)."""
        cached = self.cached_json(categories, window_s, local)
        if cached is not None:
            return cached
        key = (tuple(categories), window_s, local)
        answer = self.summary(categories, window_s, local).model_dump_json().encode()
        if self._answers is not None:
            with self._answers_lock:
                keep(self._answers, key, answer)
        return answer

    def summary(self, categories: list[Category], window_s: int | None = None, local: bool = False) -> Summary:
        self.snapshots.start()  # no-op once running; an embedding app may skip our lifespan
        window = int(window_s or self.settings.summary_window_seconds)
        if self.backend is None or local:
            queries = [query for pack in packs_for(categories).values() for query in pack]
            local_results = self.snapshots.evaluate(queries, window)
            _add_derived(local_results, queries_for(categories))
            return self._summary("local", window, categories, local_results, local_health(self.tracker), False, [])

        at = self.instant()
        recorded = self._recorded(queries_for(categories), window)
        packs = packs_for(categories, recorded)
        queries = [query for pack in packs.values() for query in pack]
        recorded &= {query.name for query in queries}
        texts = {name: packed_promql(pack, window, self.extra_matchers, recorded) for name, pack in packs.items()}
        if Category.PROVIDERS in categories:  # the fleet's health, over the tracker's window
            health_window = self._health_window()
            asked = {query.name for query in queries}
            fleet = [query for query in FLEET_HEALTH_QUERIES
                     if health_window != window or DERIVED.get(query.name) not in asked]
            packs[FLEET_PACK] = fleet
            fleet_recorded = self._recorded(fleet, health_window)
            recorded |= fleet_recorded
            texts[FLEET_PACK] = packed_promql(fleet, health_window, self.extra_matchers, fleet_recorded)
        answers = _Answers(self, categories, packs)
        batch = self.backend.query_many(texts, at=at, into=PACKED_LABELS, on_answer=answers.read)
        results = answers.results
        answered = frozenset(results)
        errors = summary_errors(batch.errors)
        missing = [q for q in queries if q.name not in results]
        if missing:
            results.update(self.snapshots.evaluate(missing, window))
            errors.append(_fallback_error(missing, queries))
        source: SummarySource = "local" if len(missing) == len(queries) else "prometheus"
        fleet_answered = FLEET_PACK in batch.results
        _add_derived(results, [*queries_for(categories), *(FLEET_HEALTH_QUERIES if fleet_answered else ())])
        health: Mapping[str, HealthFigures] = {}
        if Category.PROVIDERS in categories and Category.PROVIDERS not in answers.built:
            health = fleet_health(results, self.tracker.config) if fleet_answered else local_health(self.tracker)
        return self._summary(source, window, categories, results, health, batch.stale, errors,
                             at=at, recorded=sorted(recorded & answered), models=answers.models, built=answers.built)

    def _recorded(self, queries: list[Query], window: int) -> frozenset[str]:
        """The names of ``queries`` to read from their recorded series over ``window``."""
        usable = self.rules.usable() if self.rules is not None else frozenset()
        return frozenset(query.name for query in queries
                         if query.covered(window) and query.recorded is not None
                         and usable.issuperset(query.recorded.records))

    def instant(self) -> float:
        """The instant a summary asked now is evaluated at (Unix seconds, to the
        millisecond): now, or the instant chosen less than ``query_cache_seconds`` ago,
        so summaries of other categories within the cache's TTL share its answers."""
        with self._instant_lock:
            chosen = self._instant
            now = time.monotonic()
            if chosen is None or now - chosen[1] >= self.settings.query_cache_seconds:
                chosen = self._instant = (round(time.time(), 3), now)
            return chosen[0]

    def _health_window(self) -> int:
        return max(10, int(self.tracker.config.window_s))

    def fleet_health(self) -> tuple[dict[str, HealthFigures], list[SummaryError], bool]:
        """The providers' health computed from PromQL over every replica (fleet mode)."""
        if self.backend is None:
            return {}, [SummaryError(kind="not_configured", message="no Prometheus backend is configured")], False
        queries = list(FLEET_HEALTH_QUERIES)
        window = self._health_window()
        text = packed_promql(queries, window, self.extra_matchers, self._recorded(queries, window))
        batch = self.backend.query_many({FLEET_PACK: text}, at=self.instant(), into=PACKED_LABELS)
        answer = batch.results.get(FLEET_PACK)
        results = unpack(answer.labels, answer.values, queries) if answer is not None else {}
        return fleet_health(results, self.tracker.config), summary_errors(batch.errors), batch.stale

    def _summary(
        self,
        source: SummarySource,
        window: int,
        categories: list[Category],
        results: Mapping[str, Result],
        health: Mapping[str, HealthFigures],
        stale: bool,
        errors: list[SummaryError],
        *,
        at: float | None = None,
        recorded: list[str] | None = None,
        models: ModelTable | None = None,
        built: Mapping[Category, CategorySummary] | None = None,
    ) -> Summary:
        return Summary(
            timestamp=datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC),
            recorded_queries=recorded or [],
            source=source,
            window_seconds=window,
            stale=stale,
            errors=errors,
            metrics=build_metrics(categories, results, health, self.settings.top_n, self.top_lists, models, built),
        )

    def readiness(self) -> BackendReadiness:
        if self.backend is None:
            return BackendReadiness(configured=False)
        state = self.backend.ping()
        return BackendReadiness(
            configured=True,
            reachable=state.reachable,
            latency_ms=round(state.latency_ms, 3),
            error=None if state.error is None else f"{state.error.kind}: {state.error.message}",
        )

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


class _Answers:
    """A summary's answers, read as they arrive (``on_answer`` of
    app.summary.backend.PrometheusBackend.query_many): each one unpacked, the models
    table's columns computed from it, and each category built as soon as every answer its
    figures read is in. When the last answer arrives, what is left is its own category;
    a category missing an answer is built once the fallback has filled it in."""

    def __init__(self, service: SummaryService, categories: list[Category], packs: Mapping[str, list[Query]]) -> None:
        self.results: dict[str, Result] = {}
        self.models = ModelTable() if Category.MODELS in categories else None
        self.built: dict[Category, CategorySummary] = {}
        self._service = service
        self._packs = packs
        asked = {query.name for pack in packs.values() for query in pack}

        def reads(queries: Iterable[Query]) -> set[str]:  # a figure not asked for is summed from its finer one
            return {query.name if query.name in asked else DERIVED[query.name] for query in queries}

        self._waiting = {category: reads(SUMMARY_QUERIES[category]) for category in categories}
        if Category.PROVIDERS in self._waiting:  # and the fleet's health
            self._waiting[Category.PROVIDERS] |= reads(FLEET_HEALTH_QUERIES)

    def read(self, name: str, answer: QueryResult) -> None:
        self.results.update(unpack(answer.labels, answer.values, self._packs[name]))
        if self.models is not None:
            self.models.add(self.results)
        for category in [category for category, reads in self._waiting.items() if reads <= self.results.keys()]:
            del self._waiting[category]
            self.built[category] = self._build(category)

    def _build(self, category: Category) -> CategorySummary:
        service, results = self._service, self.results
        health: Mapping[str, HealthFigures] = {}
        if category is Category.PROVIDERS:
            _add_derived(results, FLEET_HEALTH_QUERIES)
            health = fleet_health(results, service.tracker.config)
        _add_derived(results, SUMMARY_QUERIES[category])
        return build_category(category, results, health, service.settings.top_n, service.top_lists, self.models)


def _add_derived(results: dict[str, Result], wanted: Iterable[Query]) -> None:
    """Sum the wanted figures that were not asked for from the finer ones (DERIVED)."""
    for query in wanted:
        finer = DERIVED.get(query.name)
        if query.name not in results and finer is not None and finer in results:
            results[query.name] = derive(query, ALL_QUERIES[finer], results[finer])


def _fallback_error(missing: list[Query], queries: list[Query]) -> SummaryError:
    return SummaryError(
        kind="fallback",
        message=f"{len(missing)} of {len(queries)} figures answered from this instance's registry "
        "(no good backend answer yet)",
        query=", ".join(q.name for q in missing),
    )
