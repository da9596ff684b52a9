"""Families computed at scrape time, so the request path pays nothing for them.

* ``http_requests_in_flight``: counted from the requests the middleware is serving.
* ``gatewayz_token_efficiency``: output per input token, from ``tokens_used_total``.
* the provider health gauges: from the health tracker's snapshot.

Each is a prometheus_client custom collector registered once per process in the
categories the catalogue gives its families.

With several workers (``PROMETHEUS_MULTIPROC_DIR``, see ``app.multiprocess``) the
registries read every worker's files instead of this process's objects; the in-flight and
provider gauges, which only this worker can compute, are published into its files every
``PUBLISH_INTERVAL_S`` by :class:`GaugePublisher`, and token efficiency is computed from
the summed token counters.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import multiprocess
from app.catalogue import CIRCUIT_STATE_VALUES, FAMILIES, FAMILIES_BY_NAME, MULTIPROCESS_MODES, Category, Family
from app.http_stats import HTTP_STATS, DurationCollector, RequestsCollector
from app.middleware import requests_in_flight
from app.registry import METRICS, clean_label_value


def _gauge(name: str) -> tuple[Family, GaugeMetricFamily]:
    family = FAMILIES_BY_NAME[name]
    return family, GaugeMetricFamily(name, family.help, labels=family.label_names)


class _ComputedCollector(Collector):
    #: The catalogue families this collector yields.
    families: tuple[str, ...] = ()

    def describe(self) -> Iterator[Metric]:
        # Registration asks for names; answering here keeps collect() out of import time.
        for name in self.families:
            yield _gauge(name)[1]


class InFlightCollector(_ComputedCollector):
    families = ("http_requests_in_flight",)

    def collect(self) -> Iterator[Metric]:
        family, gauge = _gauge("http_requests_in_flight")
        method_label = family.labels[0]
        tally = Tally(
            (clean_label_value(method_label, method), HTTP_STATS.endpoint_label(route))
            for method, route in requests_in_flight()
        )
        # Routes that served requests before show 0 when idle, not "no data".
        for method, route in HTTP_STATS.routes():
            tally.setdefault((method, route), 0)
        for (method, route), count in sorted(tally.items()):
            gauge.add_metric([method, route], count)
        yield gauge


class TokenEfficiencyCollector(_ComputedCollector):
    """Output per input token, from ``tokens_used_total`` as ``source`` collects it (this
    process's counter by default; every worker's files with several workers)."""

    families = ("gatewayz_token_efficiency",)

    def __init__(self, source: Callable[[], Iterable[Metric]] | None = None) -> None:
        self.source = source or METRICS["tokens_used_total"].metric.collect

    def collect(self) -> Iterator[Metric]:
        _, gauge = _gauge("gatewayz_token_efficiency")
        tokens: dict[tuple[str, str], dict[str, float]] = {}
        for metric in self.source():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["provider"], sample.labels["model"])
                    tokens.setdefault(key, {})[sample.labels["token_type"]] = sample.value
        for (provider, model), counts in sorted(tokens.items()):
            if counts.get("input"):
                gauge.add_metric([provider, model], counts.get("output", 0.0) / counts["input"])
        yield gauge


class ProviderHealthCollector(_ComputedCollector):
    """The provider gauges, from the app's health tracker at scrape time: the first
    providers recorded up to the label cap; each one beyond it is counted once in
    ``gatewayz_label_overflow_total``, not exported."""

    _overflow_counted = 0
    #: Providers whose transition counters exist at 0 (process-wide, like the counters).
    _transitions_started: set[str] = set()

    families = (
        "gatewayz_provider_health_score",
        "provider_availability",
        "provider_error_rate",
        "gatewayz_provider_circuit_state",
    )

    def collect(self) -> Iterator[Metric]:
        from app.scoring import get_tracker

        gauges = {name: _gauge(name)[1] for name in self.families}
        healths, beyond = get_tracker().exported(METRICS["provider_response_time_seconds"].label_cap)
        if beyond > self._overflow_counted:
            METRICS["gatewayz_label_overflow_total"].child(self.families[0], "provider").inc(
                beyond - self._overflow_counted)
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

    @classmethod
    def _start_transitions(cls, provider: str) -> None:
        # The transition counters exist at 0 from the provider's first scrape on (they show
        # from the next one: the counter family is written before this collector runs), so
        # its first trip is an increase: a counter series born at 1 is invisible to increase().
        transitions = METRICS["gatewayz_provider_circuit_transitions_total"]
        for state in CIRCUIT_STATE_VALUES:
            transitions.child(provider, state)
        cls._transitions_started.add(provider)


def register_collectors() -> None:
    """Register the computed families once per process (create_app may run many times)."""
    global _registered
    if _registered:
        return
    _registered = True
    if multiprocess.DIRECTORY is not None:
        _register_files_collectors(multiprocess.DIRECTORY)
        return
    METRICS.register(RequestsCollector(HTTP_STATS), FAMILIES_BY_NAME["http_requests_total"].categories)
    METRICS.register(
        DurationCollector(HTTP_STATS), FAMILIES_BY_NAME["http_request_duration_seconds"].categories
    )
    METRICS.register(InFlightCollector(), FAMILIES_BY_NAME["http_requests_in_flight"].categories)
    METRICS.register(
        TokenEfficiencyCollector(), FAMILIES_BY_NAME["gatewayz_token_efficiency"].categories
    )
    METRICS.register(
        ProviderHealthCollector(), FAMILIES_BY_NAME["gatewayz_provider_health_score"].categories
    )


#: Families this worker computes and publishes into its files (the reader sums them).
PUBLISHED = (InFlightCollector, ProviderHealthCollector)


def _register_files_collectors(path: str) -> None:
    """Every registry reads every worker's files: /metrics, the categories and the local
    summaries report all workers. One reader per family, so a category endpoint or a
    snapshot of a few families reads only their entries."""
    for family in FAMILIES:
        if MULTIPROCESS_MODES.get(family.name) != "computed":
            METRICS.register(multiprocess.FilesCollector(path, [(family.name, family.kind)]), family.categories)
    tokens = multiprocess.FilesCollector(path, [("tokens_used_total", "counter")])
    METRICS.register(TokenEfficiencyCollector(tokens.collect),
                     FAMILIES_BY_NAME["gatewayz_token_efficiency"].categories)


class GaugePublisher:
    """Writes this worker's computed gauges into its multiprocess files every ``interval``
    seconds, from a thread of its own: the request path pays nothing, and a reader in
    another process sees each worker's in-flight requests and health view, at most one
    interval old."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._collectors = [collector_type() for collector_type in PUBLISHED]  # kept: they count overflow once
        self._gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}
        for collector_type in PUBLISHED:
            for name in collector_type.families:
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
            except Exception:  # a bad moment must not end the publishing for good
                _log.exception("publishing the computed gauges failed")
            self._stop.wait(self.interval)


_log = logging.getLogger(__name__)
_registered = False
_publisher: GaugePublisher | None = None


def gauge_publisher() -> GaugePublisher | None:
    """The process's publisher with several workers (``None`` in single-process mode)."""
    global _publisher
    if _publisher is None and multiprocess.DIRECTORY is not None:
        _publisher = GaugePublisher()
    return _publisher
