"""The series of a family are bounded, not only the values of each label."""

from __future__ import annotations

import pytest

from app.catalogue import FAMILIES_BY_NAME, OVERFLOW_VALUE
from app.http_stats import HttpStats
from app.registry import DEFAULT_SERIES_CAP, BoundedMetric, label_sets_within
from app.settings import Settings

CAP = 1000


def overflow_counter() -> BoundedMetric:
    return BoundedMetric(FAMILIES_BY_NAME["gatewayz_label_overflow_total"], 100, None)


def samples(metric: BoundedMetric) -> list:
    return [s for family in metric.metric.collect() for s in family.samples]


def label_sets(metric: BoundedMetric) -> set[tuple[str, ...]]:
    names = metric.family.label_names
    return {tuple(s.labels[n] for n in names) for s in samples(metric)}


def folded(overflow: BoundedMetric, family: str, label: str) -> float:
    return sum(s.value for s in samples(overflow) if s.labels == {"metric": family, "label": label})


def test_providers_times_models_stay_within_the_series_cap() -> None:
    overflow = overflow_counter()
    requests = BoundedMetric(FAMILIES_BY_NAME["model_inference_requests_total"], 500, overflow, series_cap=CAP)
    for provider in range(200):
        for model in range(200):  # 40,000 pairs, each under the per-label cap of 500
            requests.child(f"p{provider}", f"m{model}", "success").inc()
    kept = label_sets(requests)
    assert CAP <= len(kept) <= CAP + 9  # plus at most one all-"other" set per status
    assert sum(s.value for s in samples(requests)) == 40_000  # nothing lost
    assert folded(overflow, "model_inference_requests_total", "model") == 40_000 - (CAP - CAP // 10)
    # The last tenth of the cap keeps the provider of later pairs: (p4, other) ... (p103, other).
    assert {("p4", OVERFLOW_VALUE, "success"), ("p103", OVERFLOW_VALUE, "success")} <= kept
    assert ("p104", OVERFLOW_VALUE, "success") not in kept
    assert (OVERFLOW_VALUE, OVERFLOW_VALUE, "success") in kept


def test_past_the_cap_the_widest_label_folds_first() -> None:
    requests = BoundedMetric(FAMILIES_BY_NAME["credits_used_total"], 500, overflow_counter(), series_cap=4)
    for model in ("a", "b", "c", "d"):
        requests.child("openai", model).inc()  # the cap is reached
    requests.child("openai", "e").inc()  # (openai, other) does not exist: all free text folds
    requests.child("anthropic", "f").inc()
    kept = {labels: value for labels, value in
            ((tuple(s.labels.values()), s.value) for s in samples(requests))}
    assert kept[(OVERFLOW_VALUE, OVERFLOW_VALUE)] == 2
    assert len(kept) == 5


def test_a_histogram_label_set_counts_as_its_series() -> None:
    duration = FAMILIES_BY_NAME["model_inference_duration_seconds"]
    assert label_sets_within(duration, 8000) == 8000 // (len(duration.buckets) + 3) == 533
    histogram = BoundedMetric(duration, 500, overflow_counter(), series_cap=150)
    for model in range(50):
        histogram.child("openai", f"m{model}").observe(1.0)
    series = samples(histogram)
    assert len(series) <= 150 + len(duration.buckets) + 3


def test_enum_only_families_are_never_folded() -> None:
    routing = BoundedMetric(FAMILIES_BY_NAME["gatewayz_routing_decisions_total"], 500, None, series_cap=1)
    for outcome in ("primary", "failover", "panic"):
        routing.child(outcome).inc()
    assert len(label_sets(routing)) == 3


def test_http_families_obey_the_series_cap() -> None:
    stats = HttpStats(series_cap=160)  # 160 requests_total sets; 160 // 16 = 10 routes of the histogram
    for route in range(100):
        for status in (200, 404, 500):
            stats.observe("GET", f"/r{route}", status, 0.01)
    totals = stats.totals()
    assert len(totals) <= 160 + 10
    assert len({(method, endpoint) for method, endpoint, _ in totals}) <= 10 + 10
    assert sum(sum(series[1:]) for series in totals.values()) == 300


def test_the_default_keeps_every_family_within_a_few_thousand_series() -> None:
    default = Settings.model_fields["series_cap"].default
    assert default == DEFAULT_SERIES_CAP
    for family in FAMILIES_BY_NAME.values():
        per_set = len(family.buckets) + 3 if family.kind == "histogram" else 1
        assert label_sets_within(family, default) * per_set <= default
        # ... and a label cap's worth of label sets even in a histogram
        assert label_sets_within(family, default) >= Settings.model_fields["label_cap"].default


@pytest.mark.parametrize("cap", [1, 7])
def test_a_tiny_cap_still_records_everything(cap: int) -> None:
    requests = BoundedMetric(FAMILIES_BY_NAME["tokens_used_total"], 500, overflow_counter(), series_cap=cap)
    for n in range(100):
        requests.child(f"p{n % 7}", f"m{n}", "input").inc(2)
    assert sum(s.value for s in samples(requests)) == 200
    assert len(label_sets(requests)) <= cap + 2
