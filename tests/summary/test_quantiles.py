"""app.summary.quantiles: several quantiles of every group from one pass over bucket rates
(Prometheus' own algorithm: tests/summary/test_snapshots.py and the integration tests)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from app.summary.quantiles import histogram_quantile, many_quantiles_by, quantile_le, quantiles_by

INF = math.inf


def test_decreasing_counts_read_as_the_count_before() -> None:
    # A scrape race: the 2.0 bucket read before the 1.0 one grew. Read as 5, 5, 10.
    assert histogram_quantile(0.5, {1.0: 5.0, 2.0: 4.0, INF: 10.0}) == 1.0
    assert histogram_quantile(0.75, {1.0: 5.0, 2.0: 4.0, INF: 10.0}) == 2.0


def test_quantiles_by_group_sum_the_groups_buckets() -> None:
    rates = {("1.0", "p", "a"): 1.0, ("+Inf", "p", "a"): 2.0, ("1.0", "p", "b"): 3.0, ("+Inf", "p", "b"): 4.0,
             ("1.0", "q", "a"): 0.0, ("+Inf", "q", "a"): 0.0, ("nonsense", "q", "a"): 7.0}
    p50 = quantiles_by(rates, 0.5, lambda key: key[:1])
    assert p50[("p",)] == histogram_quantile(0.5, {1.0: 4.0, INF: 6.0})
    assert math.isnan(p50[("q",)])  # no observations in the window


_BOUNDS = st.sampled_from(["0.1", "0.5", "1", "2.5", "+Inf", "x"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(_BOUNDS, st.sampled_from(["a", "b"]), st.sampled_from(["m", "n"])),
                       st.floats(min_value=0, max_value=1e6), max_size=30),
       st.lists(st.floats(min_value=-0.5, max_value=1.5), min_size=1, max_size=4))
def test_many_quantiles_are_each_quantile_of_each_group(rates: dict[tuple[str, ...], float],
                                                        qs: list[float]) -> None:
    def group(key: tuple[str, ...]) -> tuple[str, ...]:
        return key[:1]

    groups: dict[tuple[str, ...], dict[float, float]] = {}
    for (le, *labels), value in rates.items():
        try:
            bound = float(le)
        except ValueError:
            continue
        buckets = groups.setdefault(group(tuple(labels)), {})
        buckets[bound] = buckets.get(bound, 0.0) + value
    by_q = many_quantiles_by(rates, tuple(qs), group)
    for q in qs:
        expected = {key: histogram_quantile(q, buckets) for key, buckets in groups.items()}
        assert by_q[q].keys() == expected.keys()
        for key, value in expected.items():
            assert value == by_q[q][key] or (math.isnan(value) and math.isnan(by_q[q][key]))


def test_a_recorded_quantile_is_taken_as_it_is() -> None:
    # Only the +Inf bucket and the recording rule's quantiles per model, as the summaries
    # read them with the rules loaded (app.summary.promql.Recorded.quantiles).
    rates = {("+Inf", "p", "a"): 2.0, (quantile_le(0.5), "p", "a"): 0.8, (quantile_le(0.95), "p", "a"): 3.5,
             ("+Inf", "p", "b"): 1.0, (quantile_le(0.5), "p", "b"): 0.2, (quantile_le(0.99), "p", "b"): 9.0}
    by_model = many_quantiles_by(rates, (0.5, 0.95), lambda key: key)
    assert by_model[0.5] == {("p", "a"): 0.8, ("p", "b"): 0.2}
    assert by_model[0.95][("p", "a")] == 3.5
    assert math.isnan(by_model[0.95][("p", "b")])  # not recorded: one bucket alone tells nothing


def test_recorded_quantiles_merged_by_a_coarser_group_are_undefined() -> None:
    rates = {("+Inf", "p", "a"): 2.0, (quantile_le(0.5), "p", "a"): 0.8,
             ("+Inf", "p", "b"): 1.0, (quantile_le(0.5), "p", "b"): 0.2}
    by_provider = many_quantiles_by(rates, (0.5,), lambda key: key[:1])
    assert math.isnan(by_provider[0.5][("p",)])
