"""Local mode: periodic snapshots of this process's registry, and the summary queries
evaluated over them with the same meaning as their PromQL.

A rate over a window is the increase between the snapshot taken at least ``window``
ago (the oldest one while the process is younger) and now, divided by the time between
them (bucket rates included: app.summary.quantiles turns them into quantiles). Snapshots are kept at ``interval`` for the last
``FINE_SPAN_S`` and one a minute beyond, up to ``MAX_WINDOW_S``, so memory stays bounded.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.summary.promql import Kind, Matcher, Query
from app.summary.quantiles import Result

#: Longest window a summary may ask for.
MAX_WINDOW_S = 3600
#: Snapshots younger than this are all kept; older ones, one per COARSE_STEP_S.
FINE_SPAN_S = 900
COARSE_STEP_S = 60

LabelPairs = tuple[tuple[str, str], ...]
Samples = dict[str, dict[LabelPairs, float]]  # sample name -> labels -> value


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # monotonic seconds
    samples: Samples


def read_registry(registry: CollectorRegistry) -> Samples:
    samples: Samples = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


class Snapshots:
    """A bounded history of one registry, taken every ``interval`` seconds."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.clock = clock
        self._history: deque[Snapshot] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- taking snapshots -----------------------------------------------------------

    def take(self) -> Snapshot:
        snapshot = Snapshot(self.clock(), read_registry(self.registry))
        with self._lock:
            self._history.append(snapshot)
            self._prune(snapshot.at)
        return snapshot

    def _prune(self, now: float) -> None:
        history = self._history
        while history and now - history[0].at > MAX_WINDOW_S + COARSE_STEP_S:
            history.popleft()
        # Thin the coarse part: keep one snapshot per COARSE_STEP_S older than FINE_SPAN_S.
        kept: list[Snapshot] = []
        last_coarse = -math.inf
        for snapshot in history:
            if now - snapshot.at <= FINE_SPAN_S or snapshot.at - last_coarse >= COARSE_STEP_S:
                kept.append(snapshot)
                if now - snapshot.at > FINE_SPAN_S:
                    last_coarse = snapshot.at
        if len(kept) != len(history):
            self._history = deque(kept)

    def start(self) -> None:
        """Take a snapshot now and every ``interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self.take()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="registry-snapshots", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __len__(self) -> int:
        return len(self._history)

    # --- evaluating queries ----------------------------------------------------------

    def baseline(self, now: Snapshot, window_s: float) -> Snapshot | None:
        """The newest snapshot at least ``window_s`` older than ``now`` (else the oldest)."""
        with self._lock:
            history = list(self._history)
        older = [s for s in history if s.at < now.at]
        if not older:
            return None
        times = [s.at for s in older]
        index = bisect.bisect_right(times, now.at - window_s) - 1
        return older[max(index, 0)]

    def evaluate(self, queries: Iterable[Query], window_s: float) -> dict[str, Result]:
        """Every query over the last ``window_s`` seconds, against a fresh snapshot."""
        now = self.take()
        base = self.baseline(now, window_s)
        return {query.name: evaluate(query, now, base) for query in queries}


def _matches(labels: LabelPairs, matchers: tuple[Matcher, ...]) -> bool:
    values = dict(labels)
    for matcher in matchers:
        value = values.get(matcher.label, "")
        if matcher.op == "=":
            ok = value == matcher.value
        elif matcher.op == "!=":
            ok = value != matcher.value
        else:
            ok = re.fullmatch(matcher.value, value) is not None
            if matcher.op == "!~":
                ok = not ok
        if not ok:
            return False
    return True


def _group(labels: LabelPairs, by: tuple[str, ...]) -> tuple[str, ...]:
    values = dict(labels)
    return tuple(values.get(name, "") for name in by)


def _increase(now: float, before: float | None) -> float:
    if before is None or now < before:  # a series born in the window, or a counter reset
        return now
    return now - before


def evaluate(query: Query, now: Snapshot, base: Snapshot | None) -> Result:
    if query.kind is Kind.CURRENT:
        result: Result = {}
        for labels, value in now.samples.get(query.metric, {}).items():
            if _matches(labels, query.matchers):
                key = _group(labels, query.by)
                if query.aggregate == "max":
                    result[key] = max(result.get(key, -math.inf), value)
                else:
                    result[key] = result.get(key, 0.0) + value
        return result
    if base is None:
        return {}
    elapsed = now.at - base.at
    rates: Result = {}
    before = base.samples.get(query.metric, {})
    for labels, value in now.samples.get(query.metric, {}).items():
        if _matches(labels, query.matchers):
            key = _group(labels, query.by)
            rates[key] = rates.get(key, 0.0) + _increase(value, before.get(labels)) / elapsed
    if query.active_only:  # as its PromQL: drop groups whose +Inf bucket did not grow
        active = {key[1:] for key, value in rates.items() if key[0] == "+Inf" and value > 0}
        rates = {key: value for key, value in rates.items() if key[1:] in active}
    return rates
