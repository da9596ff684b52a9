"""``http_requests_total`` and ``http_request_duration_seconds``, aggregated without locks.

These two families are recorded on every request the gateway serves, so they skip
prometheus_client's per-sample locking: each thread adds into its own shard (plain lists
of bucket counts, found with one dict lookup and one ``bisect``), and the collector sums
the shards at scrape time. Measured in the gateway's event loop this is about a third of
a ``Counter.inc`` plus ``Histogram.observe`` (see ``benchmarks/hot_path.py``).

A shard is written by one thread only, so no update is lost; the count of a series is
derived from its bucket counts at scrape time, so ``_count`` always equals the ``+Inf``
bucket, whatever the scrape interleaves with. The shard of a thread that has ended is
merged into a common total and freed, so short-lived threads leave nothing behind.

With several workers (``PROMETHEUS_MULTIPROC_DIR``) each request is written straight into
the worker's multiprocess files by prometheus_client's own counter and histogram, so a
worker killed at any moment has lost nothing it counted; the shards are not used.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app import multiprocess
from app.catalogue import FAMILIES_BY_NAME, Label
from app.client_internals import bucket_cells, format_float, sum_cell, value_cell
from app.registry import (
    DEFAULT_SERIES_CAP,
    BoundedMetric,
    LabelSets,
    LabelValues,
    cacheable,
    clean_labels,
    label_sets_within,
)

_REQUESTS = FAMILIES_BY_NAME["http_requests_total"]
_DURATION = FAMILIES_BY_NAME["http_request_duration_seconds"]
BUCKETS = _DURATION.buckets
_BUCKET_LABELS = [format_float(bound) for bound in BUCKETS] + ["+Inf"]
_MAX_RAW_KEYS = 20_000

LabelKey = tuple[str, str, str]  # method, endpoint, status_code as recorded


class _Shard:
    """One thread's counts: per series ``[sum, bucket_0, ..., bucket_+Inf]``."""

    __slots__ = ("by_raw", "by_labels", "thread")

    def __init__(self, thread: threading.Thread | None = None) -> None:
        self.by_raw: dict[tuple[Any, Any, Any], list[float]] = {}
        self.by_labels: dict[LabelKey, list[float]] = {}
        self.thread = thread

    def merge_into(self, merged: dict[LabelKey, list[float]]) -> None:
        for label_key, series in list(self.by_labels.items()):
            snapshot = list(series)
            total = merged.get(label_key)
            if total is None:
                merged[label_key] = snapshot
            else:
                for index, value in enumerate(snapshot):
                    total[index] += value


class _FileSeries:
    """With several workers: one series' values in the worker's files.

    The values are prometheus_client's own (``MmapedValue``: locked, written through to
    the file), reached once here rather than through ``Counter.inc`` and
    ``Histogram.observe`` on every request: the same three writes for about two thirds of
    the time (exemplar and observability checks, a linear bucket search).
    """

    __slots__ = ("count", "sum", "buckets")

    def __init__(self, requests: Any, duration: Any) -> None:
        self.count = value_cell(requests)
        self.sum = sum_cell(duration)
        self.buckets = bucket_cells(duration)


def _remember(cache: dict[Any, Any], key: tuple[Any, Any, Any], series: Any, overflowed: list[str]) -> None:
    """Cache a raw key's series, unless a label of it overflowed (such keys are cleaned on
    every call, so every folded sample is counted) or it is too long to keep."""
    if not overflowed and len(cache) < _MAX_RAW_KEYS and cacheable(key):
        try:
            cache[key] = series
        except TypeError:  # unhashable raw value: cleaned every time
            pass


class HttpStats:
    """The two HTTP families of the catalogue, with the catalogue's label caps."""

    def __init__(
        self,
        label_cap: int = 500,
        series_cap: int = DEFAULT_SERIES_CAP,
        *,
        overflow: BoundedMetric | None = None,
        in_files: bool | None = None,
    ) -> None:
        labels: tuple[Label, ...] = _REQUESTS.labels  # method, endpoint, status_code
        self._values = [LabelValues(label, label_cap) for label in labels]
        # The series caps of both families: (method, endpoint, status_code) sets of the
        # counter, (method, endpoint) sets of the histogram.
        self._request_sets = LabelSets(self._values, label_sets_within(_REQUESTS, series_cap))
        self._route_sets = LabelSets(self._values[:2], label_sets_within(_DURATION, series_cap))
        #: ``gatewayz_label_overflow_total`` of the metric set these stats are exposed with.
        self._overflow = overflow
        self._lock = threading.Lock()  # slow path only: new shards
        self._local = threading.local()
        self._shards: list[_Shard] = []
        #: Counts of the threads that have ended, merged.
        self._ended: dict[LabelKey, list[float]] = {}
        self._file_series: dict[tuple[Any, Any, Any], _FileSeries] = {}
        self._file_labels: set[LabelKey] = set()
        if multiprocess.ENABLED if in_files is None else in_files:
            self._requests = Counter(_REQUESTS.name, _REQUESTS.help, _REQUESTS.label_names, registry=None)
            self._duration = Histogram(_DURATION.name, _DURATION.help, _DURATION.label_names,
                                       buckets=BUCKETS, registry=None)
            self.observe = self._observe_in_files  # type: ignore[method-assign]

    def endpoint_label(self, endpoint: Any) -> str:
        """What ``endpoint`` records as (``"other"`` past the cap)."""
        return self._values[1].clean(endpoint)[0]

    def observe(self, method: Any, endpoint: Any, status_code: Any, duration_s: float) -> None:
        """Count one request and its duration (seconds, non-negative)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        key = (method, endpoint, status_code)
        try:
            series = shard.by_raw[key]
        except (KeyError, TypeError):
            series = self._new_series(shard, key)
        series[0] += duration_s
        series[bisect_left(BUCKETS, duration_s) + 1] += 1

    def _new_shard(self) -> _Shard:
        shard = self._local.shard = _Shard(threading.current_thread())
        with self._lock:
            self._release_ended_shards()
            self._shards.append(shard)
        return shard

    def _release_ended_shards(self) -> None:
        """Merge the shards of threads that have ended into ``_ended`` (lock held): an
        ended thread writes no more, so the merge is exact and the shard can go."""
        live = []
        for shard in self._shards:
            if shard.thread is None or shard.thread.is_alive():
                live.append(shard)
            else:
                shard.merge_into(self._ended)
        self._shards = live

    def _observe_in_files(self, method: Any, endpoint: Any, status_code: Any, duration_s: float) -> None:
        key = (method, endpoint, status_code)
        try:
            series = self._file_series[key]
        except (KeyError, TypeError):
            series = self._new_file_series(key)
        series.count.inc(1)
        series.sum.inc(duration_s)
        series.buckets[bisect_left(BUCKETS, duration_s)].inc(1)

    def _new_file_series(self, key: tuple[Any, Any, Any]) -> _FileSeries:
        labels, overflowed = self._labels_of(key)
        series = _FileSeries(self._requests.labels(*labels), self._duration.labels(labels[0], labels[1]))
        with self._lock:
            self._file_labels.add((labels[0], labels[1], labels[2]))
            _remember(self._file_series, key, series, overflowed)
        return series

    def _labels_of(self, key: tuple[Any, Any, Any]) -> tuple[list[str], list[str]]:
        """(recorded labels, labels recorded as "other") of a raw (method, endpoint, status):
        cleaned and capped per label, then within both families' series caps."""
        labels, overflowed = clean_labels(self._values, key)
        route, folded = self._route_sets.admit(labels[:2])
        labels, folded_sets = self._request_sets.admit(route + labels[2:])
        overflowed += folded + folded_sets
        if self._overflow is not None:
            for name in overflowed:
                self._overflow.child(_REQUESTS.name, name).inc()
        return labels, overflowed

    def _new_series(self, shard: _Shard, key: tuple[Any, Any, Any]) -> list[float]:
        labels, overflowed = self._labels_of(key)
        label_key: LabelKey = (labels[0], labels[1], labels[2])
        series = shard.by_labels.get(label_key)
        if series is None:
            series = shard.by_labels[label_key] = [0.0] * (len(BUCKETS) + 2)
        _remember(shard.by_raw, key, series, overflowed)
        return series

    def totals(self) -> dict[LabelKey, list[float]]:
        """Every series summed over the shards: ``[sum, bucket counts...]``."""
        with self._lock:
            self._release_ended_shards()
            shards = list(self._shards)
            merged = {label_key: list(series) for label_key, series in self._ended.items()}
        for shard in shards:
            shard.merge_into(merged)
        return merged

    def shard_count(self) -> int:
        """Shards kept now (one per live recording thread, once ended ones are released)."""
        with self._lock:
            return len(self._shards)

    def routes(self) -> set[tuple[str, str]]:
        """(method, endpoint) of every series this process recorded so far."""
        if self._file_series or self._file_labels:
            with self._lock:
                return {(method, endpoint) for method, endpoint, _status in self._file_labels}
        return {(method, endpoint) for method, endpoint, _status in self.totals()}

    def request_counts(self) -> Iterator[tuple[LabelKey, float]]:
        for label_key, series in sorted(self.totals().items()):
            yield label_key, sum(series[1:])

    def durations(self) -> Iterator[tuple[tuple[str, str], list[tuple[str, float]], float]]:
        """((method, endpoint), cumulative buckets, sum) per route, over every status."""
        by_route: dict[tuple[str, str], list[float]] = {}
        for (method, endpoint, _status), series in self.totals().items():
            route = by_route.setdefault((method, endpoint), [0.0] * len(series))
            for index, value in enumerate(series):
                route[index] += value
        for route_key, series in sorted(by_route.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(_BUCKET_LABELS, series[1:], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            yield route_key, buckets, series[0]

    def clear(self) -> None:
        with self._lock:
            for shard in self._shards:
                shard.by_raw.clear()
                shard.by_labels.clear()
            self._ended.clear()
            self._file_series.clear()
            self._file_labels.clear()
            for values in self._values:
                values.clear()
            self._request_sets.clear()
            self._route_sets.clear()


class RequestsCollector(Collector):
    """``http_requests_total`` from an :class:`HttpStats`."""

    def __init__(self, stats: HttpStats) -> None:
        self.stats = stats

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(_REQUESTS.name, _REQUESTS.help, labels=_REQUESTS.label_names)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(_REQUESTS.name, _REQUESTS.help, labels=_REQUESTS.label_names)
        for labels, count in self.stats.request_counts():
            family.add_metric(list(labels), count)
        yield family


class DurationCollector(Collector):
    """``http_request_duration_seconds`` from an :class:`HttpStats`."""

    def __init__(self, stats: HttpStats) -> None:
        self.stats = stats

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(_DURATION.name, _DURATION.help, labels=_DURATION.label_names)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(_DURATION.name, _DURATION.help, labels=_DURATION.label_names)
        for labels, buckets, total in self.stats.durations():
            family.add_metric(list(labels), buckets, total)
        yield family

