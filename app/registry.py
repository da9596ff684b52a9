"""The process's metric objects, built once from the catalogue, with bounded labels.

Every family of ``app.catalogue`` that is recorded (not computed at scrape time) becomes
one prometheus_client metric wrapped in a :class:`BoundedMetric`, which

* caches label children by the raw values the caller passed, so the hot path is one
  dict lookup and one ``inc``/``observe``;
* cleans label values once per new raw value: enums fall back to their fallback value
  (``OTHER`` for an unknown HTTP method); free text is made safe to expose (see
  :func:`safe_text`) and capped per family: past ``label_cap`` distinct values a new
  value records under ``"other"`` and ``gatewayz_label_overflow_total`` counts it;
* bounds the family's series: past its share of ``series_cap`` (:class:`LabelSets`) a new
  label set records with a free-text label as ``"other"``, counted the same way.

The objects of one instrumented app live in a :class:`MetricSet` (owned by its
``app.telemetry.Telemetry``), whose collectors are registered in one registry per category
plus one for everything: a category endpoint only collects its own collectors, and two
sets share nothing. Nothing here touches prometheus_client's global ``REGISTRY``.
"""

from __future__ import annotations

import functools
import re
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
from app.client_internals import without_created
from app.render import Renderer

#: Longest label value kept, in characters; longer free text is cut (it is capped in count anyway).
MAX_LABEL_LENGTH = 200
#: What stands in for a character no label value may carry.
REPLACEMENT = "\ufffd"
#: C0 and C1 control characters (NUL, newline, ESC, ...) and the Unicode line and paragraph
#: separators: line-oriented tools split on them, and a terminal or log viewer obeys them.
_UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: UTF-16 surrogates: a Python str may hold them (json.loads accepts "\\ud800") but UTF-8
#: cannot encode them, so one of them in the registry would fail every scrape.
_SURROGATES = re.compile("[\ud800-\udfff]")
#: Series one family may expose (``Settings.series_cap``): the least that keeps a label
#: cap's worth (500) of label sets in every histogram, 16 series each at most.
DEFAULT_SERIES_CAP = 8000
#: Raw-value keys cached per family before lookups stop being cached. Bounds memory when
#: callers send endless distinct raw values that clean to few label values.
MAX_CACHED_KEYS = 20_000
#: Longest raw string kept as a cache key. A longer one (far past ``MAX_LABEL_LENGTH``, so a
#: misbehaving caller) is cleaned on every call instead: the caches stay bounded in bytes
#: (``MAX_CACHED_KEYS`` keys of at most this length), not only in entries.
MAX_CACHED_KEY_LENGTH = 2 * MAX_LABEL_LENGTH


def cacheable(values: tuple[Any, ...]) -> bool:
    """Whether raw label values may be kept as a cache key (bounded in bytes)."""
    for value in values:
        if isinstance(value, str) and len(value) > MAX_CACHED_KEY_LENGTH:
            return False
    return True

_METRIC_TYPES: dict[str, type[Counter] | type[Gauge] | type[Histogram]] = {
    "counter": without_created(Counter),
    "gauge": Gauge,
    "histogram": without_created(Histogram),
}


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a UTF-16 surrogate, which a Python str may hold but UTF-8, so
    no exposition format nor PromQL query, can carry."""
    return _SURROGATES.search(text) is not None


def safe_text(text: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """``text`` as any exposition format, parser and JSON encoder takes it: surrounding
    whitespace stripped, at most ``limit`` characters, paired surrogates joined, and lone
    surrogates and control characters replaced by U+FFFD."""
    text = text.strip()[:limit]
    if text.isascii():
        if text.isprintable():
            return text
    elif has_surrogates(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _UNSAFE_CHARACTERS.sub(REPLACEMENT, text)


def clean_label_value(label: Label, value: Any) -> str:
    """The label value to record for what a caller passed; never raises."""
    try:
        if isinstance(value, str):
            text = safe_text(value)
        elif isinstance(value, bool) or value is None:
            text = "" if value is None else str(value).lower()
        elif isinstance(value, (int, float)):
            text = str(value)[:MAX_LABEL_LENGTH]
        else:
            text = ""
    except Exception:  # noqa: BLE001 - str() of a 5,000-digit int, a str subclass gone wrong
        text = ""
    if label.values is not None:
        if text in label.values:
            return text
        return _enum_lookup(label).get(text.lower(), label.fallback)
    return text or UNKNOWN_VALUE


@functools.cache
def _enum_lookup(label: Label) -> dict[str, str]:
    """An enum label's values by their lower case (labels are the catalogue's: few, immutable)."""
    return {value.lower(): value for value in label.values or ()}


class LabelValues:
    """The values one label of one family has recorded, capped at ``cap`` distinct ones."""

    __slots__ = ("label", "_cap", "_seen", "_known", "_lock")

    def __init__(self, label: Label, cap: int) -> None:
        self.label = label
        self._cap = cap
        self._seen: set[str] = set()
        # raw value -> (recorded value, overflowed): each raw value is cleaned once.
        self._known: dict[Any, tuple[str, bool]] = {}
        self._lock = threading.Lock()

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def seen(self) -> int:
        """Distinct values recorded so far."""
        return len(self._seen)

    def clean(self, value: Any) -> tuple[str, bool]:
        """(recorded value, overflowed) for what a caller passed."""
        try:
            return self._known[value]
        except Exception:  # noqa: BLE001 - KeyError, or a raw value that cannot be a key
            pass
        text = clean_label_value(self.label, value)
        result = (text, False)
        with self._lock:
            if self.label.capped and text not in self._seen:
                if len(self._seen) >= self._cap:
                    result = (OVERFLOW_VALUE, True)
                else:
                    self._seen.add(text)
            if len(self._known) < MAX_CACHED_KEYS and cacheable((value,)):
                try:
                    self._known[value] = result
                except Exception:  # noqa: BLE001 - unhashable raw value: cleaned every time
                    pass
        return result

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._known.clear()


def clean_labels(label_values: list[LabelValues], raw: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """(recorded values, names of the labels that overflowed their cap) for ``raw``."""
    cleaned: list[str] = []
    overflowed: list[str] = []
    for values, value in zip(label_values, raw, strict=True):
        text, overflow = values.clean(value)
        if overflow:
            overflowed.append(values.label.name)
        cleaned.append(text)
    return cleaned, overflowed


def label_sets_within(family: Family, series_cap: int) -> int:
    """Label sets of ``family`` that fit in ``series_cap`` series: a histogram's label set
    is its buckets, +Inf, _sum and _count; a counter's or a gauge's one series."""
    per_set = len(family.buckets) + 3 if family.kind == "histogram" else 1
    return max(1, series_cap // per_set)


class LabelSets:
    """The distinct label sets one family has recorded, at most ``cap`` of them.

    Per-label caps alone still allow their product (500 providers x 500 models). Once
    nine tenths of ``cap`` are taken, a new label set records with its widest free-text
    label (the one with the most distinct values: the model rather than the provider) as
    ``"other"``; the last tenth is kept for those folded sets, so a new provider still
    shows as itself. Past ``cap`` every free-text label records as ``"other"``: a family
    never holds more than ``cap`` sets plus the few whose free text is all ``"other"``
    (bounded by its enum labels).
    """

    __slots__ = ("_values", "_free", "cap", "_sets", "_lock")

    def __init__(self, values: list[LabelValues], cap: int) -> None:
        self._values = values
        self._free = [index for index, label_values in enumerate(values) if label_values.label.capped]
        self.cap = cap
        self._sets: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sets)

    def admit(self, cleaned: list[str]) -> tuple[list[str], list[str]]:
        """(recorded values, names of the labels folded into ``"other"``) for ``cleaned``."""
        if not self._free:  # enums only: bounded by the catalogue
            return cleaned, []
        key = tuple(cleaned)
        with self._lock:
            if key in self._sets:
                return cleaned, []
            if len(self._sets) < self.cap - self.cap // 10:
                self._sets.add(key)
                return cleaned, []
            widest = max(self._free, key=lambda index: self._values[index].seen)
            folded = list(cleaned)
            folded[widest] = OVERFLOW_VALUE
            if tuple(folded) not in self._sets:
                if len(self._sets) >= self.cap:
                    for index in self._free:
                        folded[index] = OVERFLOW_VALUE
                self._sets.add(tuple(folded))
        names = [self._values[index].label.name for index in self._free if folded[index] != cleaned[index]]
        return folded, names

    def clear(self) -> None:
        with self._lock:
            self._sets.clear()


class BoundedMetric:
    """A prometheus_client metric whose label values are cleaned and capped.

    ``child(*values)`` returns the child to ``inc``/``set``/``observe``::

        requests = metric_set["model_inference_requests_total"]
        requests.child("openai", "gpt-4o", "success").inc()
    """

    __slots__ = ("family", "metric", "_values", "_sets", "_children", "_folded", "_overflow")

    def __init__(
        self,
        family: Family,
        label_cap: int,
        overflow: BoundedMetric | None,
        series_cap: int = DEFAULT_SERIES_CAP,
    ) -> None:
        self.family = family
        kwargs: dict[str, Any] = {"registry": None}
        if family.buckets:
            kwargs["buckets"] = family.buckets
        if family.kind == "gauge":
            kwargs["multiprocess_mode"] = MULTIPROCESS_MODES[family.name]
        metric_type = _METRIC_TYPES[family.kind]
        self.metric = metric_type(family.name, family.help, family.label_names, **kwargs)
        self._values = [LabelValues(label, label_cap) for label in family.labels]
        self._sets = LabelSets(self._values, label_sets_within(family, series_cap))
        self._children: dict[tuple[Any, ...], Any] = {}
        # raw values -> (child, names of the labels that recorded as "other"), counted per call
        self._folded: dict[tuple[Any, ...], tuple[Any, list[str]]] = {}
        self._overflow = overflow

    @property
    def label_cap(self) -> int:
        return self._values[0].cap if self._values else 0

    @property
    def series_cap(self) -> int:
        """Label sets this family keeps (its share of the settings' series cap)."""
        return self._sets.cap

    def child(self, *values: Any) -> Any:
        try:
            return self._children[values]
        except Exception:  # noqa: BLE001 - KeyError, or a raw value that cannot be a key
            return self._resolve(values)

    def label_value(self, label_name: str, value: Any) -> str:
        """What ``value`` records as in this family's ``label_name`` label."""
        for values in self._values:
            if values.label.name == label_name:
                return values.clean(value)[0]
        raise KeyError(label_name)

    def _resolve(self, values: tuple[Any, ...]) -> Any:
        try:
            child, folded = self._folded[values]
        except Exception:  # noqa: BLE001 - not folded before, or not a key
            if len(values) != len(self._values):
                raise ValueError(f"{self.family.name} takes {len(self._values)} label values") from None
            cleaned, folded = clean_labels(self._values, values)
            cleaned, folded_sets = self._sets.admit(cleaned)
            folded += folded_sets
            child = self.metric.labels(*cleaned)
            cache: dict[tuple[Any, ...], Any] = self._folded if folded else self._children
            if len(cache) < MAX_CACHED_KEYS and cacheable(values):
                try:
                    cache[values] = (child, folded) if folded else child
                except Exception:  # noqa: BLE001 - unhashable raw value: resolved every time
                    pass
        if self._overflow is not None:
            for name in folded:
                self._overflow.child(self.family.name, name).inc()
        return child

    def reset(self) -> None:
        """Forget every child and every seen value (tests, demo restarts)."""
        self.metric.clear()
        self._children.clear()
        self._folded.clear()
        self._sets.clear()
        for values in self._values:
            values.clear()


class MetricSet:
    """Every recorded family of the catalogue, and the registries that expose them."""

    def __init__(
        self, label_cap: int = 500, series_cap: int = DEFAULT_SERIES_CAP, in_files: bool | None = None
    ) -> None:
        overflow_family = FAMILIES_BY_NAME["gatewayz_label_overflow_total"]
        # The overflow counter's own labels are family and label names: bounded by code.
        bound = len(FAMILIES) * 4
        self._overflow = BoundedMetric(overflow_family, bound, overflow=None, series_cap=bound * bound)
        self.metrics: dict[str, BoundedMetric] = {overflow_family.name: self._overflow}
        for family in FAMILIES:
            if family.source != "recorded" or family.name in self.metrics:
                continue
            self.metrics[family.name] = BoundedMetric(family, label_cap, self._overflow, series_cap)
        self.all_registry = CollectorRegistry(auto_describe=True)
        self.category_registries = {
            category: CollectorRegistry(auto_describe=True) for category in Category
        }
        #: Writes the scrape bodies of these registries, keeping each series' line prefix.
        self.renderer = Renderer()
        #: The metrics write to prometheus_client's multiprocess files (several workers):
        #: the registries then read every worker's files instead (app.collectors).
        self.in_files = multiprocess.ENABLED if in_files is None else in_files
        if not self.in_files:
            for bounded in self.metrics.values():
                self.register(bounded.metric, bounded.family.categories)
        runtime = (
            prometheus_client.ProcessCollector(registry=None),
            prometheus_client.PlatformCollector(registry=None),
            # GCCollector insists on registering somewhere: a registry of its own, not the global one.
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

    @property
    def overflow(self) -> BoundedMetric:
        """``gatewayz_label_overflow_total``: what every cap of this set folded, counted."""
        return self._overflow

    def reset(self) -> None:
        for bounded in self.metrics.values():
            bounded.reset()

