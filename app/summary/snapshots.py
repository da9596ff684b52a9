"""Local mode: a bounded history of this process's registry, and the summary queries
evaluated over it with the same meaning as their PromQL.

A rate over a window is the increase between the snapshot taken at least ``window`` ago
(the oldest one while the history is shorter) and a fresh read of the registry, divided
by the time between them (bucket rates included: app.summary.quantiles turns them into
quantiles).

Memory and cost stay proportionate:

- A snapshot keeps only the samples the summary queries read (``WATCHED``), as one array
  of doubles per sample name; the series keys of each array live in a layout shared by
  every snapshot taken while the registry's series stay the same. A snapshot of 2
  providers x 500 models (about 33,000 samples) is 8 bytes a sample.
- prometheus_client's metric objects are read from their children directly: collect()
  would build a Sample tuple and a label dict for each of those samples.
- Only the background thread adds snapshots, every ``interval`` seconds. A summary reads
  the registry afresh for "now" and keeps nothing, so requests cannot grow the history.
- Snapshots thin out with age (``RETENTION``): every one for the last 5 minutes, one per
  15 s to 15 minutes, one a minute to ``MAX_WINDOW_S``, so a window's start is off by at
  most 5% of the window, and the rate divides by the true time between the two reads.
- The whole history, layouts included, stays within ``budget_bytes``: past it, the
  oldest snapshots go first, and the longest windows answer over the span that is kept.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from app.client_internals import (
    bucket_bounds,
    bucket_cells,
    children,
    family_name,
    format_float,
    has_value_function,
    label_names,
    read_cell,
    read_sum,
    read_value,
    reads_directly,
    registered_collectors,
)
from app.summary.fleet_health import FLEET_HEALTH_QUERIES
from app.summary.promql import SUMMARY_QUERIES, Kind, Matcher, Query, active_groups
from app.summary.quantiles import Result

#: Longest window a summary may ask for.
MAX_WINDOW_S = 3600
#: (up to this age in seconds, keep one snapshot per this many seconds; 0: every one).
RETENTION: tuple[tuple[float, float], ...] = ((300, 0), (900, 15), (MAX_WINDOW_S + 60, 60))
#: The whole history's default budget: an hour of 2 providers x 500 models takes about
#: 40 MB (benchmarks/snapshots.py), and a registry ten times that still keeps minutes.
DEFAULT_BUDGET_BYTES = 64 * 2**20
#: The status page's trend of each provider's health score (app.summary.trends): a gauge
#: the tracker's collector yields beside the circuit states the fleet queries read, so
#: keeping it costs a value per provider and snapshot, and no extra read.
TREND_WATCHED: frozenset[str] = frozenset({"gatewayz_provider_health_score"})
#: The sample names the summary queries and the trends read; nothing else is kept.
WATCHED: frozenset[str] = frozenset(
    query.metric for queries in (*SUMMARY_QUERIES.values(), FLEET_HEALTH_QUERIES) for query in queries
) | TREND_WATCHED

_ARRAY_OVERHEAD = sys.getsizeof(array("d"))
Plan = tuple[tuple[int, tuple[str, ...]], ...]


@dataclass(eq=False, slots=True)
class Layout:
    """The series of one sample name, in the order of its values: label ``names`` and,
    for each series, its label values. Shared by every snapshot with the same series."""

    names: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]
    _positions: dict[tuple[str, ...], int] | None = field(default=None, repr=False)
    #: query -> the positions it reads and their group keys, while this is the current
    #: layout of its name (dropped when the reader replaces it), so a request costs one
    #: pass over the values it reads.
    plans: dict[Query, Plan] = field(default_factory=dict, repr=False)

    def position(self, key: tuple[str, ...]) -> int | None:
        if self._positions is None:
            self._positions = {k: index for index, k in enumerate(self.keys)}
        return self._positions.get(key)

    @property
    def nbytes(self) -> int:
        tuple_size = sys.getsizeof(self.keys[0]) if self.keys else 0
        return sys.getsizeof(self.keys) + len(self.keys) * tuple_size


@dataclass(frozen=True, slots=True)
class Column:
    layout: Layout
    values: array  # type: ignore[type-arg]  # array("d"), one value per layout key


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # monotonic seconds
    columns: dict[str, Column]

    @property
    def nbytes(self) -> int:
        """The values' memory (layouts are shared, and counted once by the history)."""
        return sys.getsizeof(self.columns) + sum(
            _ARRAY_OVERHEAD + column.values.itemsize * len(column.values) for column in self.columns.values()
        )

    def samples(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """(labels, value) of every series of ``name`` (tests, debugging)."""
        column = self.columns.get(name)
        if column is not None:
            for key, value in zip(column.layout.keys, column.values, strict=True):
                yield dict(zip(column.layout.names, key, strict=True)), value


# --- reading a registry -------------------------------------------------------------------


class RegistryReader:
    """Reads the ``names`` samples of a registry into columns.

    prometheus_client's Counter, Gauge and Histogram are read from their children, with
    the values and ``le`` labels their own collect() reports; any other collector (the
    HTTP stats, the process collector, a gauge with ``set_function``) through collect().
    Layouts are reused while a family's series stay the same.
    """

    def __init__(self, registry: CollectorRegistry, names: frozenset[str] | None = WATCHED) -> None:
        self.registry = registry
        self.names = names  # None: every sample
        self._layouts: dict[str, Layout] = {}
        self._children_seen: dict[str, tuple[object, ...]] = {}
        self._unreadable: set[int] = set()  # ids of metric objects read through collect()

    def read(self) -> dict[str, Column]:
        columns: dict[str, Column] = {}
        for collector in self._collectors():
            if id(collector) not in self._unreadable and reads_directly(collector):
                try:
                    self._read_metric(collector, columns)  # type: ignore[arg-type]
                    continue
                except AttributeError:  # a gauge with set_function: collect() instead
                    self._unreadable.add(id(collector))
            self._read_collected(collector, columns)
        return columns

    def _collectors(self) -> list[Collector]:
        # The registry's own map of collectors to the names they expose (what its
        # restricted_registry() reads too), to skip the collectors of unwatched families.
        mapping = registered_collectors(self.registry)
        if self.names is None:
            return list(mapping)
        return [collector for collector, names in mapping.items() if not self.names.isdisjoint(names)]

    def _wanted(self, name: str) -> bool:
        return self.names is None or name in self.names

    def _layout(self, name: str, names: tuple[str, ...], signature: tuple[object, ...],
                keys: Callable[[], Iterable[tuple[str, ...]]]) -> Layout:
        layout = self._layouts.get(name)
        if layout is None or layout.names != names or self._children_seen.get(name) != signature:
            if layout is not None:
                layout.plans.clear()  # the history may keep the layout, not its plans
            layout = self._layouts[name] = Layout(names, tuple(keys()))
            self._children_seen[name] = signature
        return layout

    def _read_metric(self, metric: Counter | Gauge | Histogram, columns: dict[str, Column]) -> None:
        labelnames = label_names(metric)
        if isinstance(metric, Histogram):
            histograms = children(metric)
            self._read_histogram(metric, labelnames, tuple(histograms), list(histograms.values()), columns)
            return
        by_labels = children(metric)
        signature: tuple[tuple[str, ...], ...] = tuple(by_labels)
        series = list(by_labels.values())
        name = family_name(metric) + "_total" if isinstance(metric, Counter) else family_name(metric)
        if not self._wanted(name):
            return
        # a gauge's children are gauges (children() returns children of the metric's class)
        if isinstance(metric, Gauge) and any(map(has_value_function, cast("list[Gauge]", series))):
            raise AttributeError("a gauge with set_function")  # its value is a function's: collect() it
        values = array("d", map(read_value, series))
        columns[name] = Column(self._layout(name, labelnames, signature, lambda: signature), values)

    def _read_histogram(self, metric: Histogram, labelnames: tuple[str, ...], signature: tuple[tuple[str, ...], ...],
                        series: list[Histogram], columns: dict[str, Column]) -> None:
        bucket_name, sum_name = family_name(metric) + "_bucket", family_name(metric) + "_sum"
        if self._wanted(bucket_name):
            bounds = [format_float(bound) for bound in bucket_bounds(metric)]
            values = array("d")
            for child in series:  # the buckets are stored apart, exposed cumulative
                values.extend(accumulate(map(read_cell, bucket_cells(child))))
            layout = self._layout(bucket_name, (*labelnames, "le"), signature,
                                  lambda: ((*labels, le) for labels in signature for le in bounds))
            columns[bucket_name] = Column(layout, values)
        if self._wanted(sum_name):
            values = array("d", map(read_sum, series))
            columns[sum_name] = Column(self._layout(sum_name, labelnames, signature, lambda: signature), values)

    def _read_collected(self, collector: Collector, columns: dict[str, Column]) -> None:
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in collector.collect():
            for sample in family.samples:
                if self._wanted(sample.name):
                    series.setdefault(sample.name, []).append((sample.labels, sample.value))
        for name, samples in series.items():
            names = tuple(sorted({label for labels, _value in samples for label in labels}))
            keys = tuple(tuple(labels.get(label, "") for label in names) for labels, _value in samples)
            layout = self._layout(name, names, keys, keys.__iter__)  # keys known already
            columns[name] = Column(layout, array("d", [value for _labels, value in samples]))


# The values are read through app.client_internals' readers (attrgetters) in C loops (map,
# accumulate), without the children's locks, as that module explains.


# --- the history ---------------------------------------------------------------------------


class Snapshots:
    """A bounded history of one registry, taken every ``interval`` seconds."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        watched: frozenset[str] | None = WATCHED,
    ) -> None:
        """``watched``: the sample names to keep (None: all; the summaries need WATCHED)."""
        self.registry = registry
        self.interval = interval
        self.clock = clock
        self.budget_bytes = budget_bytes
        self._reader = RegistryReader(registry, watched)
        self._history: deque[Snapshot] = deque()
        self._lock = threading.Lock()  # guards _history
        self._read_lock = threading.Lock()  # the reader's layout cache
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- taking snapshots -----------------------------------------------------------

    def read(self) -> Snapshot:
        """The registry now, kept nowhere."""
        with self._read_lock:
            return Snapshot(self.clock(), self._reader.read())

    def take(self) -> Snapshot:
        """Read the registry and keep the snapshot in the history."""
        snapshot = self.read()
        with self._lock:
            self._history.append(snapshot)
            self._prune(snapshot.at)
        return snapshot

    def _prune(self, now: float) -> None:
        kept: deque[Snapshot] = deque()
        last_kept = -math.inf
        for snapshot in self._history:  # oldest first
            step = _retention_step(now - snapshot.at)
            if step is None:
                continue
            if step == 0 or snapshot.at - last_kept >= step:
                kept.append(snapshot)
                last_kept = snapshot.at
        while len(kept) > 1 and _history_bytes(kept) > self.budget_bytes:
            kept.popleft()
        self._history = kept

    @property
    def nbytes(self) -> int:
        """The memory the history holds (values and the layouts they use)."""
        with self._lock:
            return _history_bytes(self._history)

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

    def history(self) -> list[Snapshot]:
        """The snapshots kept, oldest first (a copy: later snapshots do not change it)."""
        with self._lock:
            return list(self._history)

    # --- evaluating queries ----------------------------------------------------------

    def baseline(self, now: Snapshot, window_s: float) -> Snapshot | None:
        """The newest snapshot at least ``window_s`` older than ``now`` (else the oldest)."""
        with self._lock:
            older = [s for s in self._history if s.at < now.at]
        if not older:
            return None
        times = [s.at for s in older]
        index = bisect.bisect_right(times, now.at - window_s) - 1
        return older[max(index, 0)]

    def evaluate(self, queries: Iterable[Query], window_s: float) -> dict[str, Result]:
        """Every query over the last ``window_s`` seconds, against a fresh read that is
        not kept."""
        now = self.read()
        base = self.baseline(now, window_s)
        return {query.name: evaluate(query, now, base) for query in queries}


def _retention_step(age: float) -> float | None:
    for up_to, step in RETENTION:
        if age <= up_to:
            return step
    return None


def _history_bytes(history: Iterable[Snapshot]) -> int:
    layouts: dict[int, Layout] = {}
    total = 0
    for snapshot in history:
        total += snapshot.nbytes
        for column in snapshot.columns.values():
            layouts[id(column.layout)] = column.layout
    return total + sum(layout.nbytes for layout in layouts.values())


# --- evaluating one query ------------------------------------------------------------------

def _plan(layout: Layout, query: Query) -> Plan:
    plan = layout.plans.get(query)
    if plan is None:
        groups: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per distinct group
        plan = layout.plans[query] = tuple(
            (index, groups.setdefault(group, group))
            for index, key in enumerate(layout.keys)
            if _matches(layout.names, key, query.matchers)
            for group in (_group(layout.names, key, query.by),)
        )
    return plan


def _matches(names: tuple[str, ...], key: tuple[str, ...], matchers: tuple[Matcher, ...]) -> bool:
    values = dict(zip(names, key, strict=True))
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


def _group(names: tuple[str, ...], key: tuple[str, ...], by: tuple[str, ...]) -> tuple[str, ...]:
    values = dict(zip(names, key, strict=True))
    return tuple(values.get(name, "") for name in by)


def evaluate(query: Query, now: Snapshot, base: Snapshot | None) -> Result:
    column = now.columns.get(query.metric)
    if column is None:
        return {}
    plan = _plan(column.layout, query)
    values = column.values
    if query.kind is Kind.CURRENT:
        result: Result = {}
        for index, key in plan:
            value = values[index]
            if query.aggregate == "max":
                result[key] = max(result.get(key, -math.inf), value)
            else:
                result[key] = result.get(key, 0.0) + value
        return result
    if base is None:
        return {}
    elapsed = now.at - base.at
    rates: Result = {}
    before = base.columns.get(query.metric)
    same = before is not None and before.layout is column.layout
    for index, key in plan:
        value = values[index]
        if same:
            previous: float | None = before.values[index]  # type: ignore[union-attr]
        else:
            position = None if before is None else before.layout.position(column.layout.keys[index])
            previous = None if position is None else before.values[position]  # type: ignore[union-attr]
        # A series born in the window, or a counter reset: all of it is new.
        increase = value if previous is None or value < previous else value - previous
        rates[key] = rates.get(key, 0.0) + increase / elapsed
    return active_groups(rates) if query.active_only else rates

