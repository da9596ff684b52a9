"""app.summary.figures: coarser figures summed from finer ones."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from app.summary.figures import Outcomes, milliseconds, ms, number, numbers, ratio, ratios, rollup
from app.summary.promql import CALLER_FAULT_STATUSES, ERROR_STATUSES, SCORED_STATUSES, THROTTLED_STATUSES

_STATUSES = sorted(SCORED_STATUSES | ERROR_STATUSES | THROTTLED_STATUSES | CALLER_FAULT_STATUSES | {"unknown"})


def test_outcomes_class_each_call_by_its_status() -> None:
    calls = {("p", "m", "success"): 8.0, ("p", "m", "server_error"): 1.0, ("p", "m", "rate_limit_error"): 1.0,
             ("q", "m", "success"): math.nan}
    outcomes = Outcomes.of(calls, lambda key: key[:1])
    assert outcomes.calls == {("p",): 10.0}  # NaN: undefined in the window, left out
    assert outcomes.error_rates() == {("p",): 1.0 / 9.0}  # q: no figure
    assert outcomes.throttled_shares() == {("p",): 0.1}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from(["p", "q"]), st.sampled_from(["m", "n"]), st.sampled_from(_STATUSES)),
                       st.floats(allow_infinity=True, allow_nan=True), max_size=30))
def test_outcomes_are_the_rollups_of_each_class(calls: dict[tuple[str, ...], float]) -> None:
    def group(key: tuple[str, ...]) -> tuple[str, ...]:
        return key[:1]

    def where(statuses: frozenset[str]) -> dict[tuple[str, ...], float]:
        return rollup(calls, group, lambda key: key[-1] in statuses)

    outcomes = Outcomes.of(calls, group)
    expected = (rollup(calls, group), where(SCORED_STATUSES), where(ERROR_STATUSES), where(THROTTLED_STATUSES),
                where(CALLER_FAULT_STATUSES))
    got = (outcomes.calls, outcomes.scored, outcomes.errors, outcomes.throttled, outcomes.caller_faults)
    assert [list(result.items()) for result in got] == [list(result.items()) for result in expected]


_FIGURES = st.dictionaries(st.tuples(st.sampled_from(["p", "q", "r"])),
                           st.floats(allow_infinity=True, allow_nan=True), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_FIGURES, _FIGURES, st.sampled_from([0.0, None]))
def test_a_column_of_figures_is_each_figure_computed_alone(
        parts: dict[tuple[str, ...], float], wholes: dict[tuple[str, ...], float], missing_part: float | None) -> None:
    keys = [("p",), ("q",), ("r",)]
    assert [ratios(parts, wholes, missing_part).get(key) for key in keys] == \
        [ratio(parts.get(key, missing_part), wholes.get(key)) for key in keys]
    assert [numbers(parts).get(key) for key in keys] == [number(parts.get(key)) for key in keys]
    assert [milliseconds(parts).get(key) for key in keys] == [ms(parts.get(key)) for key in keys]
