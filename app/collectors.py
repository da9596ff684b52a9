"""Families computed at scrape time, so the request path pays nothing for them.

* ``http_requests_in_flight``: counted from the requests the middleware is serving.
* ``gatewayz_token_efficiency``: output per input token, from ``tokens_used_total``.
* the provider health gauges: from the health tracker's snapshot.

Each is a prometheus_client custom collector registered once per process in the
categories the catalogue gives its families.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.catalogue import CIRCUIT_STATE_VALUES, FAMILIES_BY_NAME, Family
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
    families = ("gatewayz_token_efficiency",)

    def collect(self) -> Iterator[Metric]:
        _, gauge = _gauge("gatewayz_token_efficiency")
        tokens: dict[tuple[str, str], dict[str, float]] = {}
        for metric in METRICS["tokens_used_total"].metric.collect():
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
            gauges["gatewayz_provider_health_score"].add_metric(labels, health.score)
            gauges["provider_availability"].add_metric(labels, health.availability)
            gauges["provider_error_rate"].add_metric(labels, health.error_rate)
            gauges["gatewayz_provider_circuit_state"].add_metric(
                labels, CIRCUIT_STATE_VALUES[str(health.circuit)]
            )
        yield from gauges.values()


def register_collectors() -> None:
    """Register the computed families once per process (create_app may run many times)."""
    global _registered
    if _registered:
        return
    _registered = True
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


_registered = False
