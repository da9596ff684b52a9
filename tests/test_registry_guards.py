"""app.registry's label and series guards, value by value (SPEC section 2, label rules):
caller values are made safe to expose once, free text is capped per family (``"other"``
past the cap, counted), enums fall back, and a family's label sets are capped too."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from app import multiprocess
from app.catalogue import FAMILIES, FAMILIES_BY_NAME, OVERFLOW_VALUE, UNKNOWN_VALUE, Category, Label, enum
from app.registry import (
    DEFAULT_SERIES_CAP,
    MAX_CACHED_KEY_LENGTH,
    MAX_CACHED_KEYS,
    MAX_LABEL_LENGTH,
    REPLACEMENT,
    BoundedMetric,
    LabelSets,
    LabelValues,
    MetricSet,
    cacheable,
    clean_label_value,
    clean_labels,
    has_surrogates,
    label_sets_within,
    safe_text,
)
from app.render import Renderer

FREE = Label("model")
METHOD = enum("method", ["GET", "POST"], fallback="OTHER")
STATUS = enum("status", ["success", "server_error"])


def samples(metric: BoundedMetric) -> dict[tuple[str, ...], float]:
    """{label values: value} of a counter or gauge family (no _created samples)."""
    names = metric.family.label_names
    return {tuple(s.labels[n] for n in names): s.value for family in metric.metric.collect() for s in family.samples
            if not s.name.endswith("_created")}


def overflow_counter() -> BoundedMetric:
    return BoundedMetric(FAMILIES_BY_NAME["gatewayz_label_overflow_total"], 100, None)


# --- constants -------------------------------------------------------------------------


def test_the_documented_limits() -> None:
    assert MAX_LABEL_LENGTH == 200
    assert REPLACEMENT == "\ufffd"
    assert DEFAULT_SERIES_CAP == 8000
    assert MAX_CACHED_KEYS == 20_000
    assert MAX_CACHED_KEY_LENGTH == 400


# --- safe_text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("gpt-4o", "gpt-4o"),
        ("  padded\t\n", "padded"),
        ("a b~", "a b~"),
        ("a\nb", "a\ufffdb"),
        ("a\x00b\x1fc", "a\ufffdb\ufffdc"),
        ("a\x7fb", "a\ufffdb"),
        ("é\x85\x9f\xa0x", "é\ufffd\ufffd\xa0x"),  # C1 controls replaced, NO-BREAK SPACE kept
        ("a\u2028b\u2029c", "a\ufffdb\ufffdc"),
        ("x\x1b[31mred", "x\ufffd[31mred"),
        ("日本語", "日本語"),
        ("a\ud800b", "a\ufffdb"),  # a lone surrogate
        ("\udfff", "\ufffd"),
        ("\ud83d\ude00!", "\U0001f600!"),  # a surrogate pair: joined
        ("\ud83d\ude00\n", "\U0001f600"),  # stripped before anything else
        ("\ud83d\ude00\x01x", "\U0001f600\ufffdx"),
        ("", ""),
    ],
)
def test_safe_text(text: str, safe: str) -> None:
    assert safe_text(text) == safe


def test_safe_text_keeps_at_most_the_limit_after_stripping() -> None:
    assert safe_text("a" * 200) == "a" * 200
    assert safe_text("a" * 201) == "a" * 200
    assert safe_text("  " + "b" * 300) == "b" * 200
    assert safe_text("é" * 250) == "é" * 200
    assert safe_text("abcdef", 3) == "abc"
    assert safe_text("a\nbcdef", 3) == "a\ufffdb"


def test_has_surrogates() -> None:
    assert has_surrogates("a\ud800")
    assert has_surrogates("\udfff")
    assert not has_surrogates("\ud7ff\ue000")
    assert not has_surrogates("plain")


# --- clean_label_value -----------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("gpt-4o", "gpt-4o"),
        ("  x\n", "x"),
        ("", UNKNOWN_VALUE),
        ("   ", UNKNOWN_VALUE),
        (None, UNKNOWN_VALUE),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-1, "-1"),
        (1.5, "1.5"),
        (10**300, ("1" + "0" * 300)[:200]),
        (object(), UNKNOWN_VALUE),
        (b"bytes", UNKNOWN_VALUE),
        (Unprintable(), UNKNOWN_VALUE),
    ],
)
def test_free_text_values(value: Any, cleaned: str) -> None:
    assert clean_label_value(FREE, value) == cleaned


def test_an_int_str_refuses_records_as_unknown() -> None:
    assert clean_label_value(FREE, 10**5000) == UNKNOWN_VALUE  # str() refuses past 4,300 digits


class Weird(str):
    def strip(self, chars: str | None = None) -> str:
        raise RuntimeError("broken str subclass")


def test_a_broken_str_subclass_records_as_unknown() -> None:
    assert clean_label_value(FREE, Weird("x")) == UNKNOWN_VALUE


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [("GET", "GET"), ("get", "GET"), ("Post", "POST"), ("PATCH", "OTHER"), ("", "OTHER"), (None, "OTHER"),
     (" get ", "GET"), (1, "OTHER")],
)
def test_enum_values_match_ignoring_case_or_fall_back(value: Any, cleaned: str) -> None:
    assert clean_label_value(METHOD, value) == cleaned


def test_an_enums_default_fallback_is_unknown() -> None:
    assert clean_label_value(STATUS, "nope") == UNKNOWN_VALUE
    assert clean_label_value(STATUS, "SUCCESS") == "success"
    assert clean_label_value(STATUS, "true") == UNKNOWN_VALUE
    assert clean_label_value(enum("flag", ["true", "false"]), True) == "true"


# --- LabelValues: the per-family cap ---------------------------------------------------


def test_past_the_cap_new_values_record_as_other() -> None:
    values = LabelValues(FREE, 2)
    assert values.cap == 2
    assert values.label is FREE
    assert values.clean("a") == ("a", False)
    assert values.clean("b") == ("b", False)
    assert values.seen == 2
    assert values.clean("c") == (OVERFLOW_VALUE, True)
    assert values.clean("c") == (OVERFLOW_VALUE, True)
    assert values.clean("a") == ("a", False)  # values seen before keep recording as themselves
    assert values.clean(" b ") == ("b", False)  # another raw value cleaning to a seen one too
    assert values.seen == 2


def test_the_cap_counts_cleaned_values() -> None:
    values = LabelValues(FREE, 1)
    assert values.clean("x") == ("x", False)
    assert values.clean("x\n") == ("x", False)
    assert values.clean(None) == (OVERFLOW_VALUE, True)  # "unknown" is a second value


def test_enum_labels_are_never_capped() -> None:
    values = LabelValues(METHOD, 1)
    assert [values.clean(v) for v in ("GET", "POST", "BREW")] == [("GET", False), ("POST", False),
                                                                  ("OTHER", False)]
    assert values.seen == 0


def test_clear_forgets_the_values_seen() -> None:
    values = LabelValues(FREE, 1)
    values.clean("a")
    values.clear()
    assert values.seen == 0
    assert values.clean("b") == ("b", False)
    assert values.clean("a") == (OVERFLOW_VALUE, True)


def test_unhashable_raw_values_are_cleaned_every_time() -> None:
    values = LabelValues(FREE, 5)
    assert values.clean(["list"]) == (UNKNOWN_VALUE, False)
    assert values.clean({"a": 1}) == (UNKNOWN_VALUE, False)
    assert values.seen == 1


def test_the_raw_value_cache_is_bounded_in_entries_and_bytes() -> None:
    values = LabelValues(FREE, 10)
    long = "x" * (MAX_CACHED_KEY_LENGTH + 1)
    assert values.clean(long) == ("x" * MAX_LABEL_LENGTH, False)
    assert long not in values._known
    longest = "y" * MAX_CACHED_KEY_LENGTH
    values.clean(longest)
    assert longest in values._known
    for index in range(MAX_CACHED_KEYS + 10):
        values.clean(index)
    assert len(values._known) == MAX_CACHED_KEYS


def test_cacheable() -> None:
    assert cacheable(("a" * MAX_CACHED_KEY_LENGTH, 1, None))
    assert not cacheable(("ok", "a" * (MAX_CACHED_KEY_LENGTH + 1)))
    assert cacheable(())
    assert cacheable((10**500,))  # only strings are measured


def test_clean_labels_names_the_labels_that_overflowed() -> None:
    provider, model = LabelValues(Label("provider"), 1), LabelValues(FREE, 1)
    assert clean_labels([provider, model], ("p", "m")) == (["p", "m"], [])
    assert clean_labels([provider, model], ("q", "n")) == ([OVERFLOW_VALUE, OVERFLOW_VALUE], ["provider", "model"])
    assert clean_labels([provider, model], ("p", "n")) == (["p", OVERFLOW_VALUE], ["model"])
    with pytest.raises(ValueError):
        clean_labels([provider, model], ("p",))


# --- series cap ------------------------------------------------------------------------


def test_label_sets_within_counts_a_histograms_series() -> None:
    histogram = FAMILIES_BY_NAME["model_inference_duration_seconds"]
    assert len(histogram.buckets) == 12
    assert label_sets_within(histogram, 150) == 10  # 15 series a label set
    assert label_sets_within(histogram, 29) == 1
    assert label_sets_within(histogram, 14) == 1  # never below one
    counter = FAMILIES_BY_NAME["credits_used_total"]
    assert label_sets_within(counter, 7) == 7
    assert label_sets_within(counter, 0) == 1
    gauge = FAMILIES_BY_NAME["active_subscriptions"]
    assert label_sets_within(gauge, 3) == 3


def label_sets(cap: int, seen: tuple[int, int] = (0, 0)) -> tuple[LabelSets, list[LabelValues]]:
    values = [LabelValues(Label("provider"), 500), LabelValues(FREE, 500), LabelValues(STATUS, 500)]
    for index, count in enumerate(seen):
        for n in range(count):
            values[index].clean(f"seen{n}")
    return LabelSets(values, cap), values


def test_nine_tenths_of_the_cap_admit_label_sets_as_they_are() -> None:
    sets, _ = label_sets(20, seen=(1, 3))
    for n in range(18):
        assert sets.admit(["p", f"m{n}", "success"]) == (["p", f"m{n}", "success"], [])
    assert len(sets) == 18
    assert sets.admit(["p", "m0", "success"]) == (["p", "m0", "success"], [])  # known: as it is
    # the last tenth: the widest label (model: 3 values seen, provider 1) folds
    assert sets.admit(["p", "m18", "success"]) == (["p", OVERFLOW_VALUE, "success"], ["model"])
    assert len(sets) == 19
    assert sets.admit(["p", "m19", "success"]) == (["p", OVERFLOW_VALUE, "success"], ["model"])
    assert len(sets) == 19  # the folded set is there already
    assert sets.admit(["q", "m20", "success"]) == (["q", OVERFLOW_VALUE, "success"], ["model"])
    assert len(sets) == 20
    # the cap is reached: every free-text label folds
    assert sets.admit(["r", "m21", "success"]) == ([OVERFLOW_VALUE, OVERFLOW_VALUE, "success"],
                                                   ["provider", "model"])
    assert len(sets) == 21
    assert sets.admit(["q", "m22", "success"]) == (["q", OVERFLOW_VALUE, "success"], ["model"])  # exists
    assert sets.admit(["s", OVERFLOW_VALUE, "success"]) == ([OVERFLOW_VALUE, OVERFLOW_VALUE, "success"],
                                                            ["provider"])
    assert len(sets) == 21


@pytest.mark.parametrize(("seen", "folded"), [((4, 2), "provider"), ((2, 3), "model"), ((2, 2), "provider")])
def test_the_widest_label_is_the_one_with_most_values_seen(seen: tuple[int, int], folded: str) -> None:
    sets, _ = label_sets(10, seen=seen)
    for n in range(9):
        sets.admit(["p", f"m{n}", "success"])
    expected = [OVERFLOW_VALUE, "m", "success"] if folded == "provider" else ["p", OVERFLOW_VALUE, "success"]
    assert sets.admit(["p", "m", "success"]) == (expected, [folded])  # on a tie, the first label


def test_a_cap_under_ten_keeps_no_last_tenth() -> None:
    sets, _ = label_sets(9, seen=(1, 2))
    for n in range(9):
        assert sets.admit(["p", f"m{n}", "success"])[1] == []
    assert sets.admit(["p", "m9", "success"]) == ([OVERFLOW_VALUE, OVERFLOW_VALUE, "success"],
                                                  ["provider", "model"])


def test_enum_only_label_sets_are_not_counted() -> None:
    sets = LabelSets([LabelValues(STATUS, 1)], 1)
    for status in ("success", "server_error", "success"):
        assert sets.admit([status]) == ([status], [])
    assert len(sets) == 0


def test_label_sets_clear() -> None:
    sets, _ = label_sets(1)
    sets.admit(["p", "m", "success"])
    sets.clear()
    assert len(sets) == 0
    assert sets.admit(["q", "n", "success"]) == (["q", "n", "success"], [])
    assert sets.cap == 1


# --- BoundedMetric ---------------------------------------------------------------------


def test_a_bounded_metric_cleans_caps_and_counts_what_it_folds() -> None:
    overflow = overflow_counter()
    credits = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 2, overflow, series_cap=1000)
    assert credits.label_cap == 2
    assert credits.series_cap == 1000
    credits.child(" openai ", "gpt-4o").inc(2)
    credits.child("openai", "gpt-4o\n").inc()
    credits.child("openai", "mini").inc()
    credits.child("openai", "third").inc()  # a third model, past the cap of 2: "other"
    credits.child("openai", "fourth").inc(4)
    assert samples(credits) == {("openai", "gpt-4o"): 3.0, ("openai", "mini"): 1.0, ("openai", OVERFLOW_VALUE): 5.0}
    assert samples(overflow) == {("credits_used_total", "model"): 2.0}


def test_wrong_label_counts_raise() -> None:
    credits = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 10, None)
    with pytest.raises(ValueError, match="^credits_used_total takes 2 label values$"):
        credits.child("only-one")
    with pytest.raises(ValueError, match="takes 2 label values"):
        credits.child("a", "b", "c")


def test_label_value_is_what_a_value_records_as() -> None:
    requests = BoundedMetric(FAMILIES_BY_NAME["model_inference_requests_total"], 1, None)
    assert requests.label_value("provider", " openai\n") == "openai"
    assert requests.label_value("status", "SUCCESS") == "success"
    assert requests.label_value("model", "m") == "m"
    assert requests.label_value("model", "n") == OVERFLOW_VALUE
    with pytest.raises(KeyError, match="nope"):
        requests.label_value("nope", "x")


def test_a_folded_label_set_is_counted_each_time_it_is_used() -> None:
    overflow = overflow_counter()
    counter = BoundedMetric(FAMILIES_BY_NAME["api_key_usage_total"], 1, overflow)
    counter.child("a").inc()
    for _ in range(3):
        counter.child("b").inc()
    counter.child("c").inc()
    counter.child("a").inc()
    assert samples(counter) == {("a",): 2.0, (OVERFLOW_VALUE,): 4.0}
    assert samples(overflow) == {("api_key_usage_total", "status"): 4.0}


def test_unhashable_raw_values_still_record() -> None:
    overflow = overflow_counter()
    counter = BoundedMetric(FAMILIES_BY_NAME["api_key_usage_total"], 1, overflow)
    counter.child(["x"]).inc()
    counter.child(["y"]).inc()
    counter.child({"z": 1}).inc()
    assert samples(counter) == {(UNKNOWN_VALUE,): 3.0}
    counter.child("other-value").inc()
    counter.child(["w"]).inc()
    assert samples(counter) == {(UNKNOWN_VALUE,): 4.0, (OVERFLOW_VALUE,): 1.0}
    assert samples(overflow) == {("api_key_usage_total", "status"): 1.0}


def test_the_series_cap_folds_and_counts() -> None:
    overflow = overflow_counter()
    counter = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 500, overflow, series_cap=1)
    counter.child("p", "m").inc()
    counter.child("q", "n").inc()
    counter.child("q", "n").inc()
    assert samples(counter) == {("p", "m"): 1.0, (OVERFLOW_VALUE, OVERFLOW_VALUE): 2.0}
    assert samples(overflow) == {("credits_used_total", "provider"): 2.0, ("credits_used_total", "model"): 2.0}


def test_reset_forgets_children_values_and_sets() -> None:
    overflow = overflow_counter()
    counter = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 1, overflow, series_cap=1)
    counter.child("p", "m").inc()
    counter.child("q", "n").inc()
    counter.reset()
    assert samples(counter) == {}
    counter.child("q", "n").inc()
    assert samples(counter) == {("q", "n"): 1.0}


def test_a_histogram_gets_its_familys_buckets_and_a_gauge_its_mode() -> None:
    duration = FAMILIES_BY_NAME["model_inference_duration_seconds"]
    histogram = BoundedMetric(duration, 10, None)
    histogram.child("p", "m").observe(0.3)
    bounds = [s.labels["le"] for family in histogram.metric.collect() for s in family.samples
              if s.name.endswith("_bucket")]
    assert bounds == ["0.1", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0", "15.0", "30.0", "60.0", "120.0", "300.0",
                      "+Inf"]
    assert histogram.series_cap == DEFAULT_SERIES_CAP // (len(duration.buckets) + 3)
    gauge = BoundedMetric(FAMILIES_BY_NAME["active_subscriptions"], 10, None)
    assert vars(gauge.metric)["_multiprocess_mode"] == "mostrecent"  # MULTIPROCESS_MODES["active_subscriptions"]
    assert BoundedMetric(FAMILIES_BY_NAME["gatewayz_routing_decisions_total"], 3, None).label_cap == 3


# --- MetricSet -------------------------------------------------------------------------


def test_a_metric_set_holds_every_recorded_family_once() -> None:
    metrics = MetricSet(label_cap=7, series_cap=90, in_files=False)
    recorded = {family.name for family in FAMILIES if family.source == "recorded"}
    assert set(metrics.metrics) == recorded
    assert metrics.overflow is metrics["gatewayz_label_overflow_total"]
    assert metrics["credits_used_total"].label_cap == 7
    assert metrics["credits_used_total"].series_cap == 90
    bound = len(FAMILIES) * 4
    assert metrics.overflow.label_cap == bound
    assert metrics.overflow.series_cap == bound * bound


def test_a_metric_set_folds_into_its_own_overflow_counter() -> None:
    metrics = MetricSet(label_cap=1, in_files=False)
    metrics["api_key_usage_total"].child("a").inc()
    metrics["api_key_usage_total"].child("b").inc()
    assert metrics.all_registry.get_sample_value(
        "gatewayz_label_overflow_total", {"metric": "api_key_usage_total", "label": "status"}) == 1.0
    other = MetricSet(label_cap=1, in_files=False)
    assert other.all_registry.get_sample_value(
        "gatewayz_label_overflow_total", {"metric": "api_key_usage_total", "label": "status"}) is None


def names_in(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_each_category_registry_holds_its_families() -> None:
    metrics = MetricSet(in_files=False)
    everything = names_in(metrics.all_registry)
    for family in FAMILIES:
        if family.source != "recorded":
            continue
        name = family.name.removesuffix("_total")
        assert name in everything
        for category in Category:
            assert (name in names_in(metrics.category_registries[category])) == (category in family.categories)
    assert "process_cpu_seconds" in names_in(metrics.category_registries[Category.SYSTEM])
    assert "python_gc_objects_collected" in names_in(metrics.category_registries[Category.SYSTEM])
    assert "python_info" in everything
    assert "process_cpu_seconds" not in names_in(metrics.category_registries[Category.MODELS])


def test_in_files_registers_only_the_runtime_collectors() -> None:
    metrics = MetricSet(in_files=True)
    assert metrics.in_files is True
    assert "credits_used" not in names_in(metrics.all_registry)
    assert "python_info" in names_in(metrics.all_registry)


def test_register_exposes_a_collector_in_its_categories() -> None:
    metrics = MetricSet(in_files=False)
    extra = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 1, None)
    extra_metric = type(extra.metric)("extra_things_total", "x", registry=None)
    metrics.register(extra_metric, [Category.MODELS])
    assert "extra_things" in names_in(metrics.all_registry)
    assert "extra_things" in names_in(metrics.category_registries[Category.MODELS])
    assert "extra_things" not in names_in(metrics.category_registries[Category.BUSINESS])


def test_metric_set_reset() -> None:
    metrics = MetricSet(label_cap=1, in_files=False)
    metrics["api_key_usage_total"].child("a").inc()
    metrics["api_key_usage_total"].child("b").inc()
    metrics.reset()
    assert metrics.all_registry.get_sample_value("api_key_usage_total", {"status": "a"}) is None
    assert metrics.all_registry.get_sample_value(
        "gatewayz_label_overflow_total", {"metric": "api_key_usage_total", "label": "status"}) is None
    metrics["api_key_usage_total"].child("b").inc()
    assert metrics.all_registry.get_sample_value("api_key_usage_total", {"status": "b"}) == 1.0


def test_the_child_caches_are_bounded_in_entries_and_bytes() -> None:
    counter = BoundedMetric(FAMILIES_BY_NAME["api_key_usage_total"], 10, None)
    long = "a" * (MAX_CACHED_KEY_LENGTH + 1)
    counter.child(long).inc()
    assert (long,) not in counter._children
    # distinct raw values that all clean to "a": one label value, 20,000 cached raw keys at most
    for left in range(150):
        for right in range(150):
            counter.child(" " * left + "a" + " " * right).inc()
    assert len(counter._children) == MAX_CACHED_KEYS
    assert samples(counter) == {("a" * MAX_LABEL_LENGTH,): 1.0, ("a",): 150.0 * 150.0}


def test_the_folded_cache_is_bounded_too() -> None:
    counter = BoundedMetric(FAMILIES_BY_NAME["api_key_usage_total"], 1, overflow_counter())
    counter.child("kept").inc()
    long = "b" * (MAX_CACHED_KEY_LENGTH + 1)
    counter.child(long).inc()
    assert (long,) not in counter._folded
    for n in range(MAX_CACHED_KEYS + 5):
        counter.child(n).inc()
    assert len(counter._folded) == MAX_CACHED_KEYS
    assert samples(counter) == {("kept",): 1.0, (OVERFLOW_VALUE,): MAX_CACHED_KEYS + 6.0}


def test_metric_set_defaults() -> None:
    metrics = MetricSet()
    assert metrics.in_files is multiprocess.ENABLED
    assert metrics["credits_used_total"].label_cap == 500
    assert metrics["credits_used_total"].series_cap == DEFAULT_SERIES_CAP
    assert isinstance(metrics.renderer, Renderer)
    assert MetricSet(in_files=False).in_files is False


class Clashing:
    """A collector without ``describe``: its names are read by collecting it."""

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("credits_used", "clashes with credits_used_total", value=1.0)]


def test_every_registry_refuses_a_collector_whose_names_clash() -> None:
    metrics = MetricSet(in_files=False)
    with pytest.raises(ValueError, match="Duplicated"):
        metrics.register(Clashing(), [])
    with pytest.raises(ValueError, match="Duplicated"):
        metrics.category_registries[Category.BUSINESS].register(Clashing())
