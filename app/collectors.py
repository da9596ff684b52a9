"""Families computed at scrape time, so the request path pays nothing for them.

* collected from the app's own state (the catalogue's ``source="collected"``):
  ``http_requests_in_flight`` from the requests the middleware is serving, the provider
  health gauges from the health tracker's snapshot, the HTTP families from the HTTP stats;
* derived from other families (``source="derived"``): ``gatewayz_token_efficiency``,
  output per input token, from ``tokens_used_total``.

Each is a prometheus_client custom collector, registered by
:func:`register_collectors` in the categories the catalogue gives its families, in the
metric set of one ``app.telemetry.Telemetry``.

With several workers (``PROMETHEUS_MULTIPROC_DIR``, see ``app.multiprocess``) the
registries read every worker's files instead of this process's objects; the in-flight and
provider gauges, which only this worker can compute, are published into its files every
second by :class:`GaugePublisher`, and token efficiency is derived from the summed token
counters.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress
from operator import itemgetter, truediv
from typing import TYPE_CHECKING, cast

from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import multiprocess
from app.catalogue import CIRCUIT_STATE_VALUES, FAMILIES, FAMILIES_BY_NAME, MULTIPROCESS_MODES, Family
from app.client_internals import ValueCell, children, read_cell, value_cell
from app.http_stats import DurationCollector, HttpStats, RequestsCollector
from app.registry import MetricSet, clean_label_value
from app.render import ComputedGauge, FamilyText, Renderer

if TYPE_CHECKING:  # the exporter imports this module: it serves neither
    from app.middleware import InFlight
    from app.scoring import HealthTracker


def _gauge(name: str) -> tuple[Family, GaugeMetricFamily]:
    family = FAMILIES_BY_NAME[name]
    return family, GaugeMetricFamily(name, family.help, labels=family.label_names)


class ComputedCollector(Collector):
    #: The catalogue families this collector yields.
    families: tuple[str, ...] = ()

    def describe(self) -> Iterator[Metric]:
        # Registration asks for names; answering here keeps collect() out of import time.
        for name in self.families:
            yield _gauge(name)[1]


class InFlightCollector(ComputedCollector):
    families = ("http_requests_in_flight",)

    def __init__(self, in_flight: InFlight, http_stats: HttpStats) -> None:
        self.in_flight = in_flight
        self.http_stats = http_stats

    def collect(self) -> Iterator[Metric]:
        family, gauge = _gauge("http_requests_in_flight")
        method_label = family.labels[0]
        tally = Tally(
            (clean_label_value(method_label, method), self.http_stats.endpoint_label(route))
            for method, route in self.in_flight.requests()
        )
        # Routes that served requests before show 0 when idle, not "no data".
        for method, route in self.http_stats.routes():
            tally.setdefault((method, route), 0)
        for (method, route), count in sorted(tally.items()):
            gauge.add_metric([method, route], count)
        yield gauge


#: The ``tokens_used_total`` series: their (provider, model, token_type) and their counts.
TokenCounts = Callable[[], tuple[Iterable[tuple[str, ...]], Iterable[float]]]


def counter_token_counts(counter: Counter, renderer: Renderer | None = None) -> TokenCounts:
    """This process's ``tokens_used_total``, read from its children (no Sample built): as
    ``renderer`` read them for the counter's own lines when it did in the current scrape."""

    kept: tuple[list[Counter], list[ValueCell]] = ([], [])

    def counts() -> tuple[Iterable[tuple[str, ...]], Iterable[float]]:
        nonlocal kept
        read = None if renderer is None else renderer.values_read(counter)
        if read is not None:
            return read
        by_labels = children(counter)
        found = list(by_labels.values())
        if found != kept[0]:  # identity first: equal unless a child came or went
            kept = (found, list(map(value_cell, found)))
        return by_labels.keys(), map(read_cell, kept[1])

    return counts


class TokenEfficiencyCollector(ComputedCollector):
    """Output per input token, from the ``tokens_used_total`` counts of ``source`` (this
    process's counter; every worker's files with several workers).

    A scrape reads the counts and computes the ratios only if a count moved since the last
    one (token traffic comes in bursts; most scrapes see the counts of the last): otherwise
    it answers the last result, compared bit for bit. The ratios are computed in C loops
    over an index of the pairs, built again only when a series comes or goes."""

    families = ("gatewayz_token_efficiency",)

    def __init__(self, source: TokenCounts) -> None:
        self.source = source
        family = FAMILIES_BY_NAME[self.families[0]]
        self._lines = ComputedGauge(family.name, family.help, family.label_names)
        self._lock = threading.Lock()
        #: The token series of the last computation and the bits of their counts.
        self._keys: list[tuple[str, ...]] = []
        self._bits: bytes | None = None
        #: Each (provider, model) with an input series, in the order efficiency() reports it,
        #: and where its input and output counts are among the counts (past the end: none).
        self._pairs: list[tuple[str, str]] = []
        self._inputs: Callable[[Sequence[float]], Sequence[float]] = _picker([])
        self._outputs: Callable[[Sequence[float]], Sequence[float]] = _picker([])
        self._result: tuple[list[tuple[str, str]], list[float]] = ([], [])

    def efficiency(self) -> list[tuple[tuple[str, str], float]]:
        """((provider, model), output per input token) of every pair with input tokens."""
        pairs, values = self.columns()
        return list(zip(pairs, values, strict=True))

    def columns(self) -> tuple[list[tuple[str, str]], list[float]]:
        """What :meth:`efficiency` pairs: the (provider, model) pairs and their ratios (lists
        the caller must not change: the next scrape may answer them again)."""
        keys_read, counts_read = self.source()
        keys, counts = list(keys_read), list(counts_read)
        try:
            bits: bytes | None = array("d", counts).tobytes()
        except (TypeError, OverflowError):  # not all floats: computed every time
            bits = None
        with self._lock:
            if bits is not None and bits == self._bits and keys == self._keys:
                return self._result
            if keys != self._keys:
                self._index(keys)
            counts.append(0.0)  # the output count of a pair without an output series
            inputs, outputs = self._inputs(counts), self._outputs(counts)
            if all(inputs):
                result = (self._pairs, list(map(truediv, outputs, inputs)))
            else:  # pairs without input tokens are left out
                result = (list(compress(self._pairs, inputs)),
                          list(map(truediv, compress(outputs, inputs), filter(None, inputs))))
            self._keys, self._bits, self._result = keys, bits, result
            return result

    def _index(self, keys: list[tuple[str, ...]]) -> None:
        """Where each pair's counts are: its last input and its last other series (a pair
        is in the order of its first input series)."""
        inputs: dict[tuple[str, str], int] = {}
        outputs: dict[tuple[str, str], int] = {}
        for index, (provider, model, token_type) in enumerate(keys):
            (inputs if token_type == "input" else outputs)[provider, model] = index
        self._pairs = list(inputs)
        self._inputs = _picker(list(inputs.values()))
        self._outputs = _picker([outputs.get(pair, len(keys)) for pair in self._pairs])

    def collect(self) -> Iterator[Metric]:
        _, gauge = _gauge("gatewayz_token_efficiency")
        for pair, value in self.efficiency():
            gauge.add_metric(list(pair), value)
        yield gauge

    def family_texts(self, openmetrics: bool) -> list[FamilyText]:
        """The family's lines for ``app.render.Renderer`` (one per provider/model pair)."""
        pairs, values = self.columns()
        return [self._lines.columns_text(openmetrics, pairs, values)]


def _picker(indices: list[int]) -> Callable[[Sequence[float]], Sequence[float]]:
    """The items at ``indices`` of a sequence, in one C call."""
    if len(indices) > 1:
        return itemgetter(*indices)
    if indices:
        index = indices[0]
        return lambda values: (values[index],)
    return lambda values: ()


class ProviderHealthCollector(ComputedCollector):
    """The provider gauges, from the app's health tracker at scrape time: the first
    providers recorded up to the label cap; each one beyond it is counted once in
    ``gatewayz_label_overflow_total``, not exported."""

    families = (
        "gatewayz_provider_health_score",
        "provider_availability",
        "provider_error_rate",
        "gatewayz_provider_circuit_state",
    )

    def __init__(self, tracker: HealthTracker, metrics: MetricSet) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self._overflow_counted = 0
        #: Providers whose transition counters exist at 0.
        self._transitions_started: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        gauges = {name: _gauge(name)[1] for name in self.families}
        healths, beyond = self.tracker.exported(self.metrics["provider_response_time_seconds"].label_cap)
        if beyond > self._overflow_counted:
            self.metrics.overflow.child(self.families[0], "provider").inc(beyond - self._overflow_counted)
            self._overflow_counted = beyond
        for health in healths:
            labels = [health.provider]
            if health.provider not in self._transitions_started:
                self._start_transitions(health.provider)
            gauges["gatewayz_provider_health_score"].add_metric(labels, health.score)
            gauges["provider_availability"].add_metric(labels, health.availability)
            gauges["provider_error_rate"].add_metric(labels, health.error_rate)
            gauges["gatewayz_provider_circuit_state"].add_metric(
                labels, CIRCUIT_STATE_VALUES[str(health.circuit)]
            )
        yield from gauges.values()

    def _start_transitions(self, provider: str) -> None:
        # The transition counters exist at 0 from the provider's first scrape on (they show
        # from the next one: the counter family is written before this collector runs), so
        # its first trip is an increase: a counter series born at 1 is invisible to increase().
        transitions = self.metrics["gatewayz_provider_circuit_transitions_total"]
        for state in CIRCUIT_STATE_VALUES:
            transitions.child(provider, state)
        self._transitions_started.add(provider)


def register_collectors(
    metrics: MetricSet, http_stats: HttpStats, tracker: HealthTracker, in_flight: InFlight
) -> list[ComputedCollector]:
    """Register the computed families in ``metrics``; returns the collectors this process
    must publish into its files with several workers (:class:`GaugePublisher`)."""
    published: list[ComputedCollector] = [
        InFlightCollector(in_flight, http_stats),
        ProviderHealthCollector(tracker, metrics),
    ]
    if metrics.in_files:
        if multiprocess.DIRECTORY is None:
            raise RuntimeError(f"the metrics write to multiprocess files but {multiprocess.ENV_VAR} is unset")
        register_files_collectors(metrics, multiprocess.DIRECTORY)
        return published
    metrics.register(RequestsCollector(http_stats), FAMILIES_BY_NAME["http_requests_total"].categories)
    metrics.register(DurationCollector(http_stats), FAMILIES_BY_NAME["http_request_duration_seconds"].categories)
    tokens = cast(Counter, metrics["tokens_used_total"].metric)
    metrics.register(TokenEfficiencyCollector(counter_token_counts(tokens, metrics.renderer)),
                     FAMILIES_BY_NAME["gatewayz_token_efficiency"].categories)
    for collector in published:
        metrics.register(collector, FAMILIES_BY_NAME[collector.families[0]].categories)
    return []


def register_files_collectors(metrics: MetricSet, path: str) -> None:
    """Every registry of ``metrics`` reads every worker's files: /metrics, the categories and
    the local summaries report all workers. One reader per family, so a category endpoint or
    a snapshot of a few families reads only their entries."""
    directory = multiprocess.Directory(path)  # the files, mapped and parsed once for every family
    readers: dict[str, multiprocess.FilesCollector] = {}
    for family in FAMILIES:
        if family.source != "derived":
            readers[family.name] = multiprocess.FilesCollector(directory, [(family.name, family.kind)])
            metrics.register(readers[family.name], family.categories)
    # The family's own reader: a scrape of both reads the token counts once.
    tokens = readers["tokens_used_total"]
    labels = FAMILIES_BY_NAME["tokens_used_total"].label_names  # provider, model, token_type
    metrics.register(TokenEfficiencyCollector(lambda: tokens.keyed(labels)),
                     FAMILIES_BY_NAME["gatewayz_token_efficiency"].categories)


class GaugePublisher:
    """Writes this worker's computed gauges into its multiprocess files every ``interval``
    seconds, from a thread of its own: the request path pays nothing, and a reader in
    another process sees each worker's in-flight requests and health view, at most one
    interval old."""

    def __init__(self, collectors: list[ComputedCollector], interval: float = 1.0) -> None:
        self.interval = interval
        self._collectors = collectors
        self._gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}
        for collector in collectors:
            for name in collector.families:
                family = FAMILIES_BY_NAME[name]
                gauge = Gauge(name, family.help, family.label_names, registry=None,
                              multiprocess_mode=MULTIPROCESS_MODES[name])
                self._gauges[name] = (gauge, family.label_names)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        for collector in self._collectors:
            for metric in collector.collect():
                gauge, label_names = self._gauges[metric.name]
                for sample in metric.samples:
                    gauge.labels(*(sample.labels[name] for name in label_names)).set(sample.value)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gauge-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.publish()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - a bad moment must not end the publishing for good
                _log.exception("publishing the computed gauges failed")
            self._stop.wait(self.interval)


_log = logging.getLogger(__name__)
