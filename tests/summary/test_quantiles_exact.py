"""app.summary.quantiles against values worked out by hand from Prometheus' rules
(promql/quantile.go): linear interpolation inside the bucket the rank falls in, the lower
bound 0 for the first bucket unless its bound is not positive, the last finite bound for a
rank in the +Inf bucket, NaN without observations, -Inf/+Inf for q outside [0, 1]."""

from __future__ import annotations

import math

import pytest

from app.summary.quantiles import (
    MAX_CACHED_BOUND_CHARS,
    Result,
    _bound,
    _cached_bound,
    histogram_quantile,
    many_quantiles_by,
    observations_by,
    quantiles_by,
)

INF = math.inf
# 10 observations: 2 up to 0.1 s, 4 more up to 0.5 s, 2 more up to 1 s, 2 above.
BUCKETS = {0.1: 2.0, 0.5: 6.0, 1.0: 8.0, INF: 10.0}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.0),  # rank 0 in the first bucket: its lower end, 0
        (0.1, 0.05),  # rank 1 of the first bucket's 2: half way from 0 to 0.1
        (0.2, 0.1),  # rank 2: the first bucket's upper bound
        (0.5, 0.4),  # rank 5: 0.1 + 0.4 * (5 - 2) / 4
        (0.7, 0.75),  # rank 7: 0.5 + 0.5 * (7 - 6) / 2
        (0.8, 1.0),  # rank 8: the last finite bucket's upper bound
        (0.95, 1.0),  # rank 9.5 in +Inf: the last finite bound
        (1.0, 1.0),
    ],
)
def test_histogram_quantile_interpolates_in_the_ranks_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, dict(BUCKETS)) == pytest.approx(expected, abs=1e-12)


def test_q_outside_zero_to_one_is_minus_or_plus_infinity() -> None:
    assert histogram_quantile(-0.01, dict(BUCKETS)) == -INF
    assert histogram_quantile(1.01, dict(BUCKETS)) == INF
    # even without observations or buckets, as in Prometheus
    assert histogram_quantile(-1.0, {}) == -INF
    assert histogram_quantile(2.0, {}) == INF


@pytest.mark.parametrize(
    "buckets",
    [
        {},
        {INF: 5.0},  # one bucket only
        {0.1: 2.0, 1.0: 5.0},  # no +Inf bucket
        {0.1: 0.0, 1.0: 0.0, INF: 0.0},  # no observations
    ],
)
def test_no_quantile_without_two_buckets_an_inf_one_and_observations(buckets: dict[float, float]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_two_buckets_are_enough() -> None:
    assert histogram_quantile(0.5, {1.0: 4.0, INF: 4.0}) == 0.5


def test_one_observation_is_enough() -> None:
    assert histogram_quantile(0.5, {1.0: 1.0, INF: 1.0}) == 0.5
    assert histogram_quantile(0.5, {1.0: 0.0, 2.0: 1.0, INF: 1.0}) == 1.5


def test_q_zero_over_an_empty_first_bucket_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.0, {0.1: 0.0, 1.0: 4.0, INF: 4.0}))
    # any other rank skips the empty bucket
    assert histogram_quantile(0.5, {0.1: 0.0, 1.0: 4.0, INF: 4.0}) == pytest.approx(0.55)


def test_a_rank_on_a_bucket_boundary_reads_the_lowest_bucket_reaching_it() -> None:
    # counts 2, 2, 8, 10: rank 2 is reached by the first bucket already (its bound, 0.1),
    # not by the empty second one (0.5)
    assert histogram_quantile(0.2, {0.1: 2.0, 0.5: 2.0, 1.0: 8.0, INF: 10.0}) == pytest.approx(0.1)


def test_a_first_bucket_with_a_bound_not_above_zero_answers_its_bound() -> None:
    assert histogram_quantile(0.25, {-1.0: 2.0, 1.0: 6.0, INF: 8.0}) == -1.0
    assert histogram_quantile(0.125, {-1.0: 2.0, 1.0: 6.0, INF: 8.0}) == -1.0  # not interpolated from 0
    assert histogram_quantile(0.0, {0.0: 2.0, 1.0: 6.0, INF: 8.0}) == 0.0
    assert histogram_quantile(0.0, {0.0: 0.0, 1.0: 4.0, INF: 4.0}) == 0.0  # its bound, even when empty
    assert histogram_quantile(0.5, {-1.0: 2.0, 1.0: 6.0, INF: 8.0}) == 0.0  # -1 + 2 * (4 - 2) / 4
    assert histogram_quantile(0.1, {-2.0: 5.0, INF: 5.0}) == -2.0


def test_counts_that_decrease_are_read_as_the_count_before() -> None:
    # the 0.5 bucket dipped below the 0.1 one (a scrape race): read as 5, so 0.5 s holds nothing
    assert histogram_quantile(0.5, {0.1: 5.0, 0.5: 3.0, 1.0: 10.0, INF: 10.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.6, {0.1: 5.0, 0.5: 3.0, 1.0: 10.0, INF: 10.0}) == pytest.approx(0.6)
    # a dip at the last bucket: +Inf read as 8, so q=1 is the last finite bound
    assert histogram_quantile(1.0, {0.1: 5.0, 1.0: 8.0, INF: 7.0}) == 1.0
    assert histogram_quantile(0.5, {0.1: 5.0, 1.0: 8.0, INF: 7.0}) == pytest.approx(0.08)


def test_dips_are_raised_in_order_from_the_first_bucket() -> None:
    # 6, 2, 4, 10: the second bucket is read as 6, the third as 6 too (not 4)
    buckets = {0.1: 6.0, 0.2: 2.0, 0.3: 4.0, 1.0: 10.0, INF: 10.0}
    assert histogram_quantile(0.65, buckets) == pytest.approx(0.3 + 0.7 * (6.5 - 6) / 4)
    assert histogram_quantile(0.6, buckets) == pytest.approx(0.1)


def test_buckets_in_any_order() -> None:
    shuffled = {INF: 10.0, 1.0: 8.0, 0.1: 2.0, 0.5: 6.0}
    assert histogram_quantile(0.5, shuffled) == pytest.approx(0.4)


def test_quantiles_by_groups_and_sums_bucket_rates() -> None:
    rates: Result = {
        ("0.1", "a", "m"): 1.0, ("0.5", "a", "m"): 3.0, ("+Inf", "a", "m"): 4.0,
        ("0.1", "a", "n"): 1.0, ("0.5", "a", "n"): 1.0, ("+Inf", "a", "n"): 4.0,
        ("0.1", "b", "m"): 0.0, ("0.5", "b", "m"): 2.0, ("+Inf", "b", "m"): 2.0,
    }
    # by provider: a's buckets 2, 4, 8; b's 0, 2, 2
    by_provider = quantiles_by(rates, 0.5, lambda key: key[:1])
    assert by_provider.keys() == {("a",), ("b",)}
    assert by_provider[("a",)] == pytest.approx(0.5)  # rank 4 reached at 0.5 exactly
    assert by_provider[("b",)] == pytest.approx(0.1 + 0.4 * 0.5)  # rank 1 of 2 in (0.1, 0.5]
    # overall by default: 2, 6, 10
    assert quantiles_by(rates, 0.5) == {(): pytest.approx(0.1 + 0.4 * 3 / 4)}
    # by model
    by_model = quantiles_by(rates, 0.25, lambda key: key)
    assert by_model[("a", "m")] == pytest.approx(0.1)
    assert by_model[("a", "n")] == pytest.approx(0.1)
    assert by_model[("b", "m")] == pytest.approx(0.1 + 0.4 * 0.25)


def test_many_quantiles_answer_each_q_for_each_group() -> None:
    rates: Result = {("0.1", "a"): 2.0, ("0.5", "a"): 6.0, ("1", "a"): 8.0, ("+Inf", "a"): 10.0,
             ("1", "b"): 0.0, ("+Inf", "b"): 0.0}
    by_q = many_quantiles_by(rates, (0.5, 0.7, 0.95), lambda key: key)
    assert list(by_q) == [0.5, 0.7, 0.95]
    assert by_q[0.5][("a",)] == pytest.approx(0.4)
    assert by_q[0.7][("a",)] == pytest.approx(0.75)
    assert by_q[0.95][("a",)] == 1.0
    assert all(math.isnan(by_q[q][("b",)]) for q in by_q)
    assert many_quantiles_by({}, (0.5, 0.9)) == {0.5: {}, 0.9: {}}


def test_a_bound_written_twice_sums() -> None:
    # "1" and "1.0" are the same bound: their rates add up
    rates: Result = {("1", "x"): 1.0, ("1.0", "y"): 1.0, ("+Inf", "x"): 2.0, ("+Inf", "y"): 2.0}
    assert quantiles_by(rates, 0.25) == {(): pytest.approx(0.5)}
    assert quantiles_by(rates, 0.75) == {(): 1.0}


def test_an_le_that_is_no_number_is_skipped() -> None:
    rates: Result = {("abc", "a"): 100.0, ("0.5", "a"): 2.0, ("+Inf", "a"): 4.0, ("", "a"): 9.0}
    assert quantiles_by(rates, 0.25, lambda key: key) == {("a",): pytest.approx(0.25)}
    assert quantiles_by({("abc", "a"): 1.0}, 0.5, lambda key: key) == {}


def test_observations_are_the_inf_bucket_by_group() -> None:
    rates: Result = {("0.1", "a", "m"): 1.0, ("+Inf", "a", "m"): 3.0, ("+Inf", "a", "n"): 2.0,
             ("inf", "b", "m"): 5.0, ("0.5", "b", "n"): 7.0, ("nonsense", "c", "m"): 1.0}
    assert observations_by(rates, lambda key: key[:1]) == {("a",): 5.0, ("b",): 5.0}
    assert observations_by(rates, lambda key: key) == {("a", "m"): 3.0, ("a", "n"): 2.0, ("b", "m"): 5.0}
    assert observations_by(rates) == {(): 10.0}
    assert observations_by({("1e308", "a"): 1.0}) == {}


@pytest.mark.parametrize(
    ("le", "expected"),
    [("0.005", 0.005), ("2.5e+06", 2.5e6), ("+Inf", INF), ("Inf", INF), ("-1", -1.0), ("10", 10.0)],
)
def test_bounds_read_as_numbers(le: str, expected: float) -> None:
    assert _bound(le) == expected


@pytest.mark.parametrize("le", ["", "abc", "0.1s", "1,5"])
def test_an_le_that_is_no_number_has_no_bound(le: str) -> None:
    assert _bound(le) is None


def test_long_bounds_are_read_without_being_cached() -> None:
    long = "0." + "0" * (MAX_CACHED_BOUND_CHARS - 2) + "1"  # one character past the limit
    longest = "0." + "0" * (MAX_CACHED_BOUND_CHARS - 4) + "25"  # exactly the limit
    assert len(long) == MAX_CACHED_BOUND_CHARS + 1 and len(longest) == MAX_CACHED_BOUND_CHARS
    before = _cached_bound.cache_info()
    assert _bound(long) == float(long)
    assert _bound(long + "x") is None
    after = _cached_bound.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    _bound(longest)
    _bound(longest)
    final = _cached_bound.cache_info()
    assert final.hits + final.misses == after.hits + after.misses + 2
    assert MAX_CACHED_BOUND_CHARS == 32
