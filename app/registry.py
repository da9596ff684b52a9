"""The process's metric objects, built once from the catalogue, with bounded labels.

Every family of ``app.catalogue`` that is recorded (not computed at scrape time) becomes
one prometheus_client metric wrapped in a :class:`BoundedMetric`, which

* caches label children by the raw values the caller passed, so the hot path is one
  dict lookup and one ``inc``/``observe``;
* cleans label values: enums fall back to their fallback value (``OTHER`` for an unknown
  HTTP method), free text is capped per family: past ``label_cap`` distinct values a new
  value records under ``"other"`` and ``gatewayz_label_overflow_total`` counts it.

The objects live in one process-wide :class:`MetricSet` (``METRICS``) whose collectors are
registered in one registry per category plus one for everything, so ``create_app()`` can
run many times without duplicate registrations and a category endpoint only collects its
own collectors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from app import multiprocess
from app.catalogue import (
    FAMILIES,
    FAMILIES_BY_NAME,
    MULTIPROCESS_MODES,
    OVERFLOW_VALUE,
    UNKNOWN_VALUE,
    Category,
    Family,
    Label,
)

# ``*_created`` series double the series count of every counter and histogram and no
# dashboard of ours reads them.
prometheus_client.disable_created_metrics()

#: Longest label value kept; longer free text is cut (it is capped in count anyway).
MAX_LABEL_LENGTH = 200
#: Raw-value keys cached per family before lookups stop being cached. Bounds memory when
#: callers send endless distinct raw values that clean to few label values.
MAX_CACHED_KEYS = 20_000

_METRIC_TYPES: dict[str, type[Counter] | type[Gauge] | type[Histogram]] = {
    "counter": Counter,
    "gauge": Gauge,
    "histogram": Histogram,
}


def clean_label_value(label: Label, value: Any) -> str:
    """The label value to record for what a caller passed; never raises."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool) or value is None:
        text = "" if value is None else str(value).lower()
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        text = ""
    if label.values is not None:
        if text in label.values:
            return text
        return _enum_lookup(label).get(text.lower(), label.fallback)
    if not text:
        return UNKNOWN_VALUE
    return text[:MAX_LABEL_LENGTH]


_ENUM_LOOKUPS: dict[Label, dict[str, str]] = {}


def _enum_lookup(label: Label) -> dict[str, str]:
    lookup = _ENUM_LOOKUPS.get(label)
    if lookup is None:
        lookup = _ENUM_LOOKUPS[label] = {value.lower(): value for value in label.values or ()}
    return lookup


class LabelValues:
    """The values one label of one family has recorded, capped at ``cap`` distinct ones."""

    __slots__ = ("label", "cap", "_seen", "_known", "_lock")

    def __init__(self, label: Label, cap: int) -> None:
        self.label = label
        self.cap = cap
        self._seen: set[str] = set()
        self._known: dict[Any, str] = {}  # raw value -> recorded value, for values within the cap
        self._lock = threading.Lock()

    def clean(self, value: Any) -> tuple[str, bool]:
        """(recorded value, overflowed) for what a caller passed."""
        try:
            return self._known[value], False
        except (KeyError, TypeError):
            pass
        text = clean_label_value(self.label, value)
        with self._lock:
            if self.label.capped and text not in self._seen:
                if len(self._seen) >= self.cap:
                    return OVERFLOW_VALUE, True
                self._seen.add(text)
            if len(self._known) < MAX_CACHED_KEYS:
                try:
                    self._known[value] = text
                except TypeError:  # unhashable raw value: cleaned every time
                    pass
        return text, False

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._known.clear()


def clean_labels(label_values: list[LabelValues], raw: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """(recorded values, names of the labels that overflowed their cap) for ``raw``."""
    cleaned: list[str] = []
    overflowed: list[str] = []
    for values, value in zip(label_values, raw):
        text, overflow = values.clean(value)
        if overflow:
            overflowed.append(values.label.name)
        cleaned.append(text)
    return cleaned, overflowed


class BoundedMetric:
    """A prometheus_client metric whose label values are cleaned and capped.

    ``child(*values)`` returns the child to ``inc``/``set``/``observe``::

        requests = METRICS["model_inference_requests_total"]
        requests.child("openai", "gpt-4o", "success").inc()
    """

    __slots__ = ("family", "metric", "_values", "_children", "_overflow")

    def __init__(self, family: Family, label_cap: int, overflow: BoundedMetric | None) -> None:
        self.family = family
        kwargs: dict[str, Any] = {"registry": None}
        if family.buckets:
            kwargs["buckets"] = family.buckets
        if family.kind == "gauge":
            kwargs["multiprocess_mode"] = MULTIPROCESS_MODES[family.name]
        metric_type = _METRIC_TYPES[family.kind]
        self.metric = metric_type(family.name, family.help, family.label_names, **kwargs)
        self._values = [LabelValues(label, label_cap) for label in family.labels]
        self._children: dict[tuple[Any, ...], Any] = {}
        self._overflow = overflow

    @property
    def label_cap(self) -> int:
        return self._values[0].cap if self._values else 0

    @label_cap.setter
    def label_cap(self, cap: int) -> None:
        for values in self._values:
            values.cap = cap

    def child(self, *values: Any) -> Any:
        try:
            return self._children[values]
        except (KeyError, TypeError):
            return self._resolve(values)

    def label_value(self, label_name: str, value: Any) -> str:
        """What ``value`` records as in this family's ``label_name`` label."""
        for values in self._values:
            if values.label.name == label_name:
                return values.clean(value)[0]
        raise KeyError(label_name)

    def _resolve(self, values: tuple[Any, ...]) -> Any:
        if len(values) != len(self._values):
            raise ValueError(f"{self.family.name} takes {len(self._values)} label values")
        cleaned, overflowed = clean_labels(self._values, values)
        child = self.metric.labels(*cleaned)
        if not overflowed and len(self._children) < MAX_CACHED_KEYS:
            try:
                self._children[values] = child
            except TypeError:  # unhashable raw value: resolved every time
                pass
        if self._overflow is not None:
            for name in overflowed:
                self._overflow.child(self.family.name, name).inc()
        return child

    def reset(self) -> None:
        """Forget every child and every seen value (tests, demo restarts)."""
        self.metric.clear()
        self._children.clear()
        for values in self._values:
            values.clear()


class MetricSet:
    """Every recorded family of the catalogue, and the registries that expose them."""

    def __init__(self, label_cap: int = 500) -> None:
        overflow_family = FAMILIES_BY_NAME["gatewayz_label_overflow_total"]
        # The overflow counter's own labels are family and label names: bounded by code.
        self._overflow = BoundedMetric(overflow_family, label_cap=len(FAMILIES) * 4, overflow=None)
        self.metrics: dict[str, BoundedMetric] = {overflow_family.name: self._overflow}
        for family in FAMILIES:
            if family.computed or family.name in self.metrics:
                continue
            self.metrics[family.name] = BoundedMetric(family, label_cap, self._overflow)
        self.all_registry = CollectorRegistry(auto_describe=True)
        self.category_registries = {
            category: CollectorRegistry(auto_describe=True) for category in Category
        }
        if not multiprocess.ENABLED:
            # With several workers the registries read every worker's files instead
            # (app.collectors.register_collectors); the metrics only write to them.
            for name, bounded in self.metrics.items():
                self.register(bounded.metric, bounded.family.categories)
        runtime = (
            prometheus_client.ProcessCollector(registry=None),
            prometheus_client.PlatformCollector(registry=None),
            # GCCollector insists on registering somewhere; it is re-registered below.
            prometheus_client.GCCollector(registry=CollectorRegistry()),
        )
        for collector in runtime:
            self.register(collector, [Category.SYSTEM])

    def __getitem__(self, name: str) -> BoundedMetric:
        return self.metrics[name]

    def register(self, collector: Collector, categories: Iterable[Category]) -> None:
        """Expose ``collector`` in ``/metrics`` and in each of ``categories``."""
        self.all_registry.register(collector)
        for category in categories:
            self.category_registries[category].register(collector)

    def set_label_cap(self, label_cap: int) -> None:
        for name, bounded in self.metrics.items():
            if bounded is not self._overflow:
                bounded.label_cap = label_cap

    def reset(self) -> None:
        for bounded in self.metrics.values():
            bounded.reset()


#: The process-wide metric set every helper, middleware and app of this process shares.
METRICS = MetricSet()
