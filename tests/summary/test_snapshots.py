"""Local evaluation of the summary queries: rates, quantiles, matchers, bounded history."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.summary.promql import Kind, Matcher, Query, buckets, current, rate
from app.summary.quantiles import histogram_quantile, quantiles_by
from app.summary.snapshots import MAX_WINDOW_S, RETENTION, WATCHED, Snapshots


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, +Inf)
        (0.5, {1.0: 4, 2.0: 8, INF: 10}, 1.25),
        (0.25, {1.0: 4, 2.0: 8, INF: 10}, 0.625),
        (0.9, {1.0: 4, 2.0: 8, INF: 10}, 2.0),  # rank in +Inf: the highest finite bound
        (0.0, {1.0: 2, 2.0: 8, INF: 10}, 0.0),
        (1.0, {1.0: 10, 2.0: 10, INF: 10}, 1.0),
        (-0.1, {1.0: 4, INF: 10}, -INF),
        (1.1, {1.0: 4, INF: 10}, INF),
    ],
)
def test_histogram_quantile_matches_prometheus(q: float, buckets: dict[float, float], expected: float) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize("buckets", [{1.0: 0, INF: 0}, {1.0: 3, 2.0: 5}, {INF: 4}, {1.0: 0, 2.0: 8, INF: 10}])
def test_histogram_quantile_is_nan_when_undefined(buckets: dict[float, float]) -> None:
    q = 0.0 if buckets.get(2.0) == 8 else 0.5
    assert math.isnan(histogram_quantile(q, buckets))


def make() -> tuple[CollectorRegistry, Clock, Snapshots]:
    registry = CollectorRegistry()
    clock = Clock()
    return registry, clock, Snapshots(registry, interval=5, clock=clock, watched=None)


def test_rate_is_the_increase_over_the_window_per_second() -> None:
    registry, clock, snapshots = make()
    calls = Counter("calls", "", ["provider", "status"], registry=registry)
    snapshots.take()
    for second in range(1, 601):
        clock.now = second
        calls.labels("a", "success").inc(2)
        calls.labels("b", "success").inc(1)
        calls.labels("b", "error").inc(1)
        if second % 5 == 0:
            snapshots.take()
    clock.now = 600.5
    results = snapshots.evaluate(
        [rate("all", "calls_total", "provider"),
         rate("errors", "calls_total", "provider", matchers=(Matcher("status", "!=", "success"),))],
        window_s=300,
    )
    assert results["all"][("a",)] == pytest.approx(2.0, rel=0.01)
    assert results["all"][("b",)] == pytest.approx(2.0, rel=0.01)
    assert results["errors"] == {("b",): pytest.approx(1.0, rel=0.01)}


def test_quantile_uses_only_the_window() -> None:
    registry, clock, snapshots = make()
    latency = Histogram("latency_seconds", "", ["provider"], buckets=(0.1, 1.0, 10.0), registry=registry)
    for _ in range(100):
        latency.labels("a").observe(5.0)  # slow, but before the window
    snapshots.take()
    clock.now = 400
    for _ in range(100):
        latency.labels("a").observe(0.05)
    results = snapshots.evaluate([buckets("latency", "latency_seconds", "provider")], window_s=300)
    p50 = quantiles_by(results["latency"], 0.5, lambda key: key)
    assert p50[("a",)] == pytest.approx(0.05)


def test_current_sums_or_takes_the_max() -> None:
    registry, _clock, snapshots = make()
    keys = Gauge("keys", "", ["status", "instance"], registry=registry)
    keys.labels("active", "1").set(10)
    keys.labels("active", "2").set(10)
    results = snapshots.evaluate(
        [current("summed", "keys", "status"), current("maxed", "keys", "status", aggregate="max")], 300
    )
    assert results["summed"] == {("active",): 20}
    assert results["maxed"] == {("active",): 10}


def test_regex_matchers_are_anchored_like_promql() -> None:
    registry, _clock, snapshots = make()
    codes = Gauge("codes", "", ["status_code"], registry=registry)
    for code in ("500", "503", "1500", "200"):
        codes.labels(code).set(1)
    results = snapshots.evaluate(
        [Query("fivexx", Kind.CURRENT, "codes", matchers=(Matcher("status_code", "=~", "5.."),))], 300
    )
    assert results["fivexx"] == {(): 2}


def test_idle_groups_are_dropped_from_bucket_rates() -> None:
    registry, clock, snapshots = make()
    latency = Histogram("lat_seconds", "", ["model"], buckets=(1.0,), registry=registry)
    latency.labels("idle").observe(0.5)
    snapshots.take()
    clock.now = 60
    latency.labels("busy").observe(0.5)
    results = snapshots.evaluate([buckets("b", "lat_seconds", "model")], window_s=60)
    assert {key[1] for key in results["b"]} == {"busy"}


def test_quantiles_roll_up_to_coarser_groups() -> None:
    rates = {("1", "a"): 4.0, ("2", "a"): 8.0, ("+Inf", "a"): 10.0,
             ("1", "b"): 0.0, ("2", "b"): 10.0, ("+Inf", "b"): 10.0}
    assert quantiles_by(rates, 0.5, lambda key: key)[("a",)] == pytest.approx(1.25)
    # both together: 20 observations, 4 in (0, 1], 14 in (1, 2]
    assert quantiles_by(rates, 0.5)[()] == pytest.approx(1 + 6 / 14)


def test_history_thins_out_with_age() -> None:
    registry, clock, snapshots = make()
    Counter("c", "", registry=registry).inc()
    for second in range(0, 2 * MAX_WINDOW_S, 5):
        clock.now = second
        snapshots.take()
    expected, start = 0.0, 0.0
    for up_to, step in RETENTION:
        expected += (up_to - start) / (step or 5)
        start = up_to
    assert len(snapshots) <= expected + len(RETENTION)
    ages = [clock.now - s.at for s in snapshots._history]
    assert max(ages) >= MAX_WINDOW_S  # the longest window still has its baseline


def test_requests_never_grow_the_history() -> None:
    registry, clock, snapshots = make()
    calls = Counter("calls", "", registry=registry)
    snapshots.take()
    for n in range(300):
        clock.now = n / 10
        calls.inc()
        snapshots.evaluate([rate("r", "calls_total")], window_s=10 + n)
    assert len(snapshots) == 1


def test_history_stays_within_its_budget() -> None:
    registry = CollectorRegistry()
    clock = Clock()
    snapshots = Snapshots(registry, clock=clock, budget_bytes=400_000, watched=None)
    latency = Histogram("lat_seconds", "", ["model"], registry=registry)
    for model in range(200):
        latency.labels(str(model)).observe(0.1)
    for second in range(0, 900, 5):
        clock.now = second
        snapshots.take()
    assert snapshots.nbytes <= 400_000
    assert 1 < len(snapshots) < 900 / 5
    assert snapshots._history[-1].at == clock.now  # the oldest go first


def test_only_watched_samples_are_kept() -> None:
    registry = CollectorRegistry()
    Counter("model_inference_requests", "", ["provider", "model", "status"], registry=registry).labels(
        "a", "m", "success").inc()
    Counter("unrelated", "", ["x"], registry=registry).labels("y").inc()
    snapshot = Snapshots(registry).take()
    assert set(snapshot.columns) == {"model_inference_requests_total"} <= WATCHED


def test_direct_read_matches_collect() -> None:
    registry = CollectorRegistry()
    Counter("hits", "", ["route"], registry=registry).labels("/a").inc(3)
    Counter("plain", "", registry=registry).inc(2)
    Gauge("level", "", ["tank"], registry=registry).labels("t1").set(-4.5)
    Gauge("computed", "", registry=registry).set_function(lambda: 7.0)
    histogram = Histogram("lat_seconds", "", ["model"], buckets=(0.1, 1.0), registry=registry)
    histogram.labels("m").observe(0.5)
    histogram.labels("n").observe(5)
    Histogram("bare_seconds", "", registry=registry).observe(0.2)
    expected = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect() for sample in family.samples
    }
    snapshot = Snapshots(registry, watched=None).read()
    read = {
        (name, tuple(sorted(labels.items()))): value
        for name in snapshot.columns
        for labels, value in snapshot.samples(name)
    }
    assert read and all(expected[key] == value for key, value in read.items())
    assert {name for name, _labels in read} >= {"hits_total", "plain_total", "level", "computed", "lat_seconds_bucket",
                                                "lat_seconds_sum", "bare_seconds_bucket"}


def test_promql_rendering() -> None:
    # Sums take one series per instance first: an instance scraped by two jobs counts once.
    assert rate("r", "model_inference_requests_total", "provider").promql(300) == (
        "sum by (provider) (max by (instance, provider, model, status) "
        "(rate(model_inference_requests_total[5m])))"
    )
    assert rate("r", "calls_total", "provider").promql(300) == (
        "sum by (provider) (max without (job) (rate(calls_total[5m])))"
    )
    # Idle groups are dropped from the answer (active_groups), not by a second selector.
    assert buckets("b", "lat_seconds", "provider", "model").promql(90) == (
        "sum by (le, provider, model) (max without (job) (rate(lat_seconds_bucket[90s])))"
    )
    assert buckets("b", "database_query_duration_seconds").promql(60) == (
        "sum by (le) (max by (instance, table, le) (rate(database_query_duration_seconds_bucket[1m])))"
    )
    job = (Matcher("job", "=", "gateway-metrics"),)
    assert rate("r", "cache_hits_total").promql(60, job) == (
        'sum(max by (instance, cache_name) (rate(cache_hits_total{job="gateway-metrics"}[1m])))'
    )
    assert current("c", "keys", aggregate="max").promql(300) == "max(keys)"  # max needs no dedup


def test_label_values_are_escaped_in_promql() -> None:
    query = Query("x", Kind.CURRENT, "m", matchers=(Matcher("model", "=", 'a"} or vector(1) #\\\n'),))
    assert query.promql(300) == 'sum(max without (job) (m{model="a\\"} or vector(1) #\\\\\\n"}))'
