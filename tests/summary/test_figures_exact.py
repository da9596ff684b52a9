"""app.summary.figures: every figure of each category against values worked out by hand
from the query results (SPEC section 4: rates, ratios and percentiles over the window;
"error rate" is failed + unreached over the scored calls; a window without traffic gives
null, not a division by zero)."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.catalogue import Category
from app.scoring.outcome import Outcome
from app.summary.figures import (
    PERCENTILES,
    HealthFigures,
    ModelTable,
    Outcomes,
    _http_outcome,
    build_business,
    build_metrics,
    build_models,
    build_performance,
    build_providers,
    build_system,
    ms,
    number,
    ratio,
    rollup,
)
from app.summary.quantiles import Result
from app.topn import TopLists

INF = "+Inf"


def buckets(labels: tuple[str, ...], cumulative: dict[str, float]) -> Result:
    """Bucket rates keyed (le, *labels), as the named queries answer them."""
    return {(le, *labels): value for le, value in cumulative.items()}


# --- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_an_undefined_number_is_none(value: float | None) -> None:
    assert number(value) is None


@pytest.mark.parametrize("value", [0.0, -2.5, 1e300, 3.0])
def test_a_finite_number_is_itself(value: float) -> None:
    assert number(value) == value


def test_ratio_is_none_without_a_part_or_a_whole() -> None:
    assert ratio(None, 4.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(0.0, 0.0) is None
    assert ratio(0.0, 4.0) == 0.0
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(-1.0, 4.0) == -0.25
    assert ratio(math.inf, 4.0) is None
    assert ratio(1e308, 1e-308) is None  # overflows to infinity


def test_ms_is_seconds_times_1000_rounded_to_microseconds() -> None:
    assert ms(0.1234567) == 123.457
    assert ms(2.0) == 2000.0
    assert ms(0.0) == 0.0
    assert ms(-0.0005) == -0.5
    assert ms(None) is None
    assert ms(math.nan) is None
    assert ms(math.inf) is None


def test_rollup_sums_finite_values_to_the_coarser_keys() -> None:
    result: Result = {("a", "m"): 1.0, ("a", "n"): 2.0, ("b", "m"): 4.0, ("b", "n"): math.nan, ("c", "m"): math.inf}
    assert rollup(result, lambda key: key[:1]) == {("a",): 3.0, ("b",): 4.0}
    assert rollup(result, lambda key: ()) == {(): 7.0}
    assert rollup(result, lambda key: key[1:], lambda key: key[0] != "b") == {("m",): 1.0, ("n",): 2.0}
    assert rollup({}, lambda key: ()) == {}


# --- outcome classes -------------------------------------------------------------------


def test_outcomes_by_class() -> None:
    calls: Result = {
        ("a", "m", "success"): 6.0, ("a", "m", "server_error"): 1.0, ("a", "n", "timeout"): 1.0,
        ("a", "n", "rate_limit_error"): 2.0, ("a", "m", "invalid_request_error"): 1.0,
        ("a", "m", "authentication_error"): 0.5, ("a", "n", "not_found_error"): 0.5,
        ("a", "m", "service_unavailable"): 1.0, ("a", "m", "unknown"): 3.0, ("b", "m", "success"): math.inf,
    }
    outcomes = Outcomes.of(calls, lambda key: key[:1])
    assert outcomes.calls == {("a",): 16.0}
    assert outcomes.scored == {("a",): 10.0}  # success, server_error, timeout, invalid_request, unavailable
    assert outcomes.errors == {("a",): 3.0}
    assert outcomes.throttled == {("a",): 2.0}
    assert outcomes.caller_faults == {("a",): 2.0}
    assert outcomes.error_rates() == {("a",): 0.3}  # b: no finite calls, no figure
    assert outcomes.throttled_shares() == {("a",): 0.125}
    assert outcomes.client_error_shares() == {("a",): 0.125}


def test_a_class_without_calls_is_a_zero_share_of_the_calls() -> None:
    outcomes = Outcomes.of({("p", "m", "success"): 4.0}, lambda key: key[:1])
    assert outcomes.error_rates() == {("p",): 0.0}
    assert outcomes.throttled_shares() == {("p",): 0.0}
    assert outcomes.client_error_shares() == {("p",): 0.0}


@pytest.mark.parametrize(
    ("code", "outcome"),
    [("200", Outcome.SUCCESS), ("301", Outcome.SUCCESS), ("400", Outcome.CLIENT_ERROR),
     ("404", Outcome.NOT_FOUND), ("408", Outcome.UNREACHED), ("429", Outcome.THROTTLED),
     ("500", Outcome.FAILURE), ("503", Outcome.UNREACHED), ("20", None), ("2000", None), ("2x0", None),
     ("", None), ("abc", None), (" 20", None)],
)
def test_a_gateway_status_code_is_three_digits(code: str, outcome: Outcome | None) -> None:
    assert _http_outcome(code) == outcome


def test_percentiles_are_p50_p95_p99() -> None:
    assert PERCENTILES == {"p50": 0.5, "p95": 0.95, "p99": 0.99}


# --- providers -------------------------------------------------------------------------


def providers_results() -> dict[str, Result]:
    return {
        "calls_per_second": {
            ("a", "m", "success"): 6.0, ("a", "m", "server_error"): 1.0, ("a", "n", "timeout"): 1.0,
            ("a", "n", "rate_limit_error"): 2.0, ("a", "m", "invalid_request_error"): 1.0,
            ("a", "m", "authentication_error"): 1.0,
            ("c", "x", "success"): 3.0, ("c", "x", "service_unavailable"): 1.0,
            ("e", "m", "rate_limit_error"): 2.0,
            ("b", "m", "success"): math.nan,
        },
        "provider_latency_buckets": {
            **buckets(("a",), {"0.1": 2.0, "0.5": 6.0, "1": 8.0, INF: 10.0}),
            **buckets(("c",), {"0.2": 1.0, INF: 4.0}),
        },
        "provider_latency_sum": {("a",): 4.0, ("c",): 2.0},
        "cost_usd": {("b",): 1.25, ("a",): 0.5},
    }


HEALTH = {
    "c": HealthFigures(score=0.9, state="healthy", circuit="closed", availability=0.99, error_rate=0.01),
    "a": HealthFigures(score=0.5, state="degraded", circuit="half_open", availability=0.8, error_rate=0.2),
    "d": HealthFigures(score=0.0, state="unavailable", circuit="open"),
}


def test_providers_figures() -> None:
    summary = build_providers(providers_results(), HEALTH)
    by_name = {p.provider: p for p in summary.providers}
    assert [p.provider for p in summary.providers] == ["a", "b", "c", "d", "e"]
    a = by_name["a"]
    assert (a.health_score, a.state, a.circuit, a.availability) == (0.5, "degraded", "half_open", 0.8)
    assert a.requests_per_second == 12.0
    assert a.error_rate == 2.0 / 9.0  # server_error + timeout over 9 scored
    assert a.throttled_share == 2.0 / 12.0
    assert a.client_error_share == 2.0 / 12.0
    assert a.avg_response_time_ms == 400.0  # 4 s/s over 10 calls/s
    assert a.p95_response_time_ms == 1000.0  # rank 9.5 in +Inf: the last finite bound
    assert a.cost_usd == 0.5
    b = by_name["b"]  # only its cost (and a NaN rate) is known
    assert (b.health_score, b.state, b.circuit, b.availability) == (None, "unknown", None, None)
    assert (b.requests_per_second, b.error_rate, b.throttled_share, b.client_error_share) == (None,) * 4
    assert (b.avg_response_time_ms, b.p95_response_time_ms, b.cost_usd) == (None, None, 1.25)
    c = by_name["c"]
    assert (c.health_score, c.state, c.circuit, c.availability) == (0.9, "healthy", "closed", 0.99)
    assert c.error_rate == 0.25
    assert (c.throttled_share, c.client_error_share) == (0.0, 0.0)
    assert c.avg_response_time_ms == 500.0
    assert c.p95_response_time_ms == 200.0
    assert c.cost_usd is None
    d = by_name["d"]  # health only
    assert (d.state, d.circuit, d.requests_per_second, d.error_rate) == ("unavailable", "open", None, None)
    e = by_name["e"]  # only throttled calls: no scored call, so no error rate
    assert (e.state, e.requests_per_second, e.error_rate) == ("unknown", 2.0, None)
    assert (e.throttled_share, e.client_error_share) == (1.0, 0.0)
    assert (summary.total_providers, summary.healthy_providers, summary.degraded_providers) == (5, 1, 1)
    assert (summary.unavailable_providers, summary.unknown_providers) == (1, 2)
    assert summary.avg_error_rate == 3.0 / 13.0
    assert summary.avg_response_time_ms == 428.571  # 6 s/s over 14 calls/s


def test_providers_without_results() -> None:
    summary = build_providers({}, {})
    assert summary.providers == []
    assert (summary.total_providers, summary.healthy_providers, summary.unknown_providers) == (0, 0, 0)
    assert (summary.avg_error_rate, summary.avg_response_time_ms) == (None, None)


# --- models ----------------------------------------------------------------------------


def models_results() -> dict[str, Result]:
    return {
        "calls_per_second": {
            ("a", "m", "success"): 3.0, ("a", "m", "server_error"): 1.0, ("a", "n", "rate_limit_error"): 1.0,
            ("b", "m", "not_found_error"): 2.0,
        },
        "calls_total": {("a", "m"): 100.0, ("c", "z"): 7.0},
        "tokens_total": {("a", "m", "input"): 1000.0, ("a", "m", "output"): 250.0, ("d", "q", "output"): 5.0},
        "inference_buckets": buckets(("a", "m"), {"0.1": 2.0, "0.5": 6.0, "1": 8.0, "2": 10.0, INF: 10.0}),
        "ttft_buckets": buckets(("a", "m"), {"0.2": 1.0, "1": 3.0, INF: 4.0}),
        "tpot_buckets": buckets(("a", "m"), {"0.01": 2.0, "0.05": 4.0, INF: 4.0}),
        "tpot_sum": {("a", "m"): 0.1},
    }


def test_models_figures() -> None:
    summary = build_models(models_results())
    assert summary.total_models == 5
    assert [(m.provider, m.model) for m in summary.models] == [("a", "m"), ("a", "n"), ("b", "m"), ("c", "z"),
                                                               ("d", "q")]
    am, an, bm, cz, dq = summary.models
    assert (am.requests_total, am.requests_per_second, am.error_rate) == (100.0, 4.0, 0.25)
    assert (am.throttled_share, am.client_error_share) == (0.0, 0.0)
    assert (am.p50_ms, am.p95_ms, am.p99_ms) == (400.0, 1750.0, 1950.0)
    assert (am.ttft_p50_ms, am.ttft_p95_ms) == (600.0, 1000.0)
    assert (am.tpot_p50_ms, am.tpot_p95_ms) == (10.0, 46.0)
    assert am.output_tokens_per_second == pytest.approx(40.0)  # 4 streamed calls/s over 0.1 s/s
    assert (am.tokens_input, am.tokens_output, am.token_efficiency) == (1000.0, 250.0, 0.25)
    assert (an.requests_total, an.requests_per_second, an.error_rate) == (0.0, 1.0, None)
    assert (an.throttled_share, an.client_error_share) == (1.0, 0.0)
    assert (an.p50_ms, an.p95_ms, an.p99_ms, an.ttft_p50_ms, an.tpot_p95_ms) == (None,) * 5
    assert (an.output_tokens_per_second, an.tokens_input, an.tokens_output, an.token_efficiency) == (
        None, 0.0, 0.0, None)
    assert (bm.requests_per_second, bm.error_rate, bm.client_error_share) == (2.0, None, 1.0)
    assert (cz.requests_total, cz.requests_per_second, cz.error_rate, cz.throttled_share) == (7.0, None, None, None)
    assert (dq.tokens_input, dq.tokens_output, dq.token_efficiency) == (0.0, 5.0, None)


def test_models_without_results() -> None:
    summary = build_models({})
    assert (summary.total_models, summary.models) == (0, [])


def test_a_model_with_calls_only() -> None:
    (model,) = build_models({"calls_total": {("a", "m"): 3.0}}).models
    assert (model.requests_total, model.requests_per_second, model.error_rate) == (3.0, None, None)
    assert (model.p50_ms, model.tpot_p95_ms, model.output_tokens_per_second) == (None, None, None)
    assert (model.tokens_input, model.tokens_output, model.token_efficiency) == (0.0, 0.0, None)


def test_input_tokens_without_output_tokens_are_a_zero_efficiency() -> None:
    (model,) = build_models({"tokens_total": {("a", "m", "input"): 10.0}}).models
    assert (model.requests_total, model.tokens_input, model.tokens_output, model.token_efficiency) == (
        0.0, 10.0, 0.0, 0.0)


@given(order=st.permutations(tuple(models_results())), answered=st.integers(0, len(models_results())))
def test_the_models_table_is_the_same_whatever_order_its_answers_arrive_in(
        order: list[str], answered: int) -> None:
    # Answers arrive one at a time, some never: each group of columns is computed once all
    # it reads are in, the rest when the rows are assembled.
    every = models_results()
    results: dict[str, Result] = {}
    table = ModelTable()
    for name in order[:answered]:
        results[name] = every[name]
        table.add(results)
    assert build_models(results, table) == build_models(results)


# --- business --------------------------------------------------------------------------


def test_business_figures() -> None:
    lists = TopLists(10)
    lists.users_by_credits.add("u1", 1.23456789)
    lists.users_by_credits.add("u2", 5.0)
    lists.users_by_credits.add("u3", 0.5)
    lists.keys_by_credits.add("key_1", 2.0)
    lists.keys_by_credits.add("key_4", 1.0)
    lists.keys_by_credits.add("key_5", 3.0)
    lists.keys_by_requests.add("key_2", 7.0)
    lists.keys_by_requests.add("key_3", 9.0)
    lists.keys_by_requests.add("key_6", 1.0)
    results: dict[str, Result] = {
        "subscriptions": {("pro", "monthly"): 3.0, ("basic", "yearly"): 2.0},
        "cost_usd": {("b",): 1.5, ("a",): 0.25, ("c",): math.nan},
        "api_keys": {("active",): 12.0, ("revoked",): 3.0},
        "trials": {("active",): 4.0, ("expired",): 9.0},
        "tokens_total": {("a", "m", "input"): 100.0, ("a", "m", "output"): 20.0, ("b", "n", "input"): math.inf},
        "credits_total": {("a", "m"): 1.5, ("b", "n"): 2.5},
        "credits_per_second": {(): 0.125},
    }
    summary = build_business(results, 2, lists)
    assert summary.subscriptions_by_plan == {"basic/yearly": 2.0, "pro/monthly": 3.0}
    assert list(summary.subscriptions_by_plan) == ["basic/yearly", "pro/monthly"]
    assert summary.active_subscriptions == 5.0
    assert summary.cost_by_provider == {"a": 0.25, "b": 1.5}
    assert list(summary.cost_by_provider) == ["a", "b"]
    assert summary.total_cost_usd == 1.75
    assert (summary.active_api_keys, summary.active_trials) == (12.0, 4.0)
    assert (summary.total_tokens_used, summary.total_credits_used) == (120.0, 4.0)
    assert summary.credits_per_second == 0.125
    assert [(e.key, e.value, e.error) for e in summary.top_users_by_credits] == [("u2", 5.0, 0.0),
                                                                                 ("u1", 1.234568, 0.0)]
    assert [(e.key, e.value) for e in summary.top_api_keys_by_credits] == [("key_5", 3.0), ("key_1", 2.0)]
    assert [(e.key, e.value) for e in summary.top_api_keys_by_requests] == [("key_3", 9.0), ("key_2", 7.0)]


def test_top_entries_round_the_error_too() -> None:
    lists = TopLists(1)
    lists.users_by_credits.add("a", 5.0)
    lists.users_by_credits.add("b", 1.0 / 3.0)  # dropped: the floor is 1/3
    lists.users_by_credits.add("c", 10.0)
    lists.users_by_credits.add("d", 1.0)  # 4/3, dropped again below c: the floor is 4/3
    assert [(e.key, e.value, e.error) for e in build_business({}, 5, lists).top_users_by_credits] == [
        ("c", 10.333333, 0.333333)]


def test_business_without_results() -> None:
    summary = build_business({}, 10, TopLists(10))
    assert (summary.active_api_keys, summary.active_subscriptions, summary.active_trials) == (0.0, 0.0, 0.0)
    assert (summary.total_tokens_used, summary.total_credits_used, summary.total_cost_usd) == (0.0, 0.0, 0.0)
    assert summary.credits_per_second is None
    assert (summary.cost_by_provider, summary.subscriptions_by_plan) == ({}, {})
    assert summary.top_users_by_credits == summary.top_api_keys_by_credits == summary.top_api_keys_by_requests == []
    assert build_business({"credits_per_second": {(): math.nan}}, 10, TopLists(10)).credits_per_second is None


# --- performance -----------------------------------------------------------------------


def performance_results() -> dict[str, Result]:
    return {
        "http_per_second": {("200",): 8.0, ("400",): 2.0, ("404",): 1.0, ("429",): 2.0, ("500",): 1.0,
                            ("503",): 1.0, ("abc",): 5.0, ("2000",): 1.0},
        "http_buckets": buckets((), {"0.1": 2.0, "0.5": 6.0, "1": 8.0, "2": 10.0, INF: 10.0}),
        "inference_buckets_all": buckets((), {"1": 1.0, "2": 3.0, "4": 4.0, INF: 4.0}),
        "ttft_buckets_all": buckets((), {"0.5": 1.0, INF: 2.0}),
        "tpot_buckets_all": buckets((), {"0.02": 3.0, "0.04": 4.0, INF: 4.0}),
        "database_buckets": buckets((), {"0.01": 1.0, "0.1": 2.0, INF: 2.0}),
        "cache_hits_per_second": {(): 3.0},
        "cache_misses_per_second": {(): 1.0},
        "rate_limited_per_second": {(): 0.5},
        "in_flight": {("GET", "/x"): 2.0, ("POST", "/y"): 1.0},
    }


def test_performance_figures() -> None:
    summary = build_performance(performance_results())
    assert summary.requests_per_second == 21.0
    # 500 and 503 over 200, 400, 500, 503 (not 404, 429, nor what is no status code)
    assert summary.error_rate == 2.0 / 12.0
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (400.0, 1750.0, 1950.0)
    assert (summary.inference_p50_ms, summary.inference_p95_ms, summary.inference_p99_ms) == (1500.0, 3600.0,
                                                                                              3920.0)
    assert summary.ttft_p95_ms == 500.0
    assert summary.tpot_p95_ms == 36.0
    assert summary.database_p95_ms == 91.0
    assert summary.cache_hit_rate == 0.75
    assert summary.rate_limited_per_second == 0.5
    assert summary.in_flight == 3.0


@pytest.mark.parametrize(
    ("hits", "misses", "rate"),
    [(3.0, None, 1.0), (None, 2.0, 0.0), (None, None, None), (0.0, 0.0, None), (1.0, 3.0, 0.25),
     (math.nan, 2.0, 0.0)],
)
def test_cache_hit_rate(hits: float | None, misses: float | None, rate: float | None) -> None:
    results: dict[str, Result] = {}
    if hits is not None:
        results["cache_hits_per_second"] = {(): hits}
    if misses is not None:
        results["cache_misses_per_second"] = {(): misses}
    assert build_performance(results).cache_hit_rate == rate


def test_performance_without_results() -> None:
    summary = build_performance({})
    assert (summary.requests_per_second, summary.error_rate) == (None, None)
    assert (summary.p50_ms, summary.inference_p99_ms, summary.ttft_p95_ms, summary.tpot_p95_ms) == (None,) * 4
    assert (summary.database_p95_ms, summary.cache_hit_rate, summary.rate_limited_per_second) == (None,) * 3
    assert summary.in_flight == 0.0


def test_performance_error_rate_needs_scored_responses() -> None:
    only_throttled = build_performance({"http_per_second": {("429",): 2.0}})
    assert (only_throttled.requests_per_second, only_throttled.error_rate) == (2.0, None)
    all_fine = build_performance({"http_per_second": {("200",): 2.0}})
    assert (all_fine.requests_per_second, all_fine.error_rate) == (2.0, 0.0)
    all_failed = build_performance({"http_per_second": {("502",): 1.0, ("500",): 3.0}})
    assert all_failed.error_rate == 1.0


# --- system ----------------------------------------------------------------------------


def test_system_figures() -> None:
    started = time.time() - 100.25
    results: dict[str, Result] = {
        "process_start_time": {(): started},
        "resident_memory_bytes": {(): 1e6},
        "cpu_seconds_per_second": {(): 0.25},
        "open_fds": {(): 12.0},
        "connections": {("websocket",): 3.0, ("http",): 5.0},
        "queues": {("jobs",): 2.0, ("emails",): math.nan},
        "http_requests_total": {("GET", "/", "200"): 10.0, ("POST", "/", "500"): 5.0},
        "exceptions_per_second": {(): 0.1},
        "label_overflows_total": {("m", "model"): 4.0, ("n", "provider"): 1.0},
        "rejected_inputs_total": {("h", "negative"): 2.0},
    }
    summary = build_system(results)
    assert summary.uptime_seconds is not None and 100.25 <= summary.uptime_seconds <= 101.0
    assert summary.uptime_seconds == round(summary.uptime_seconds, 3)
    assert (summary.resident_memory_bytes, summary.cpu_seconds_per_second, summary.open_fds) == (1e6, 0.25, 12.0)
    assert summary.active_connections == {"http": 5.0, "websocket": 3.0}
    assert list(summary.active_connections) == ["http", "websocket"]
    assert summary.queue_sizes == {"jobs": 2.0}
    assert summary.http_requests_total == 15.0
    assert summary.exceptions_per_second == 0.1
    assert (summary.label_overflows_total, summary.rejected_inputs_total) == (5.0, 2.0)


def test_system_without_results() -> None:
    summary = build_system({})
    assert (summary.uptime_seconds, summary.resident_memory_bytes, summary.cpu_seconds_per_second) == (None,) * 3
    assert (summary.open_fds, summary.exceptions_per_second) == (None, None)
    assert (summary.active_connections, summary.queue_sizes) == ({}, {})
    assert (summary.http_requests_total, summary.label_overflows_total, summary.rejected_inputs_total) == (0.0,) * 3


# --- categories ------------------------------------------------------------------------


@pytest.mark.parametrize("category", list(Category))
def test_metrics_hold_the_categories_asked_for(category: Category) -> None:
    names = ("providers", "models", "business", "performance", "system")
    metrics = build_metrics([category], {}, {}, 10, TopLists(10))
    present = [name for name in names if getattr(metrics, name) is not None]
    assert present == [category.value]
    every = build_metrics(list(Category), {}, {}, 10, TopLists(10))
    assert all(getattr(every, name) is not None for name in names)
    assert build_metrics([], {}, {}, 10, TopLists(10)).model_dump() == dict.fromkeys(names)


def test_metrics_pass_results_health_and_top_n_through() -> None:
    lists = TopLists(10)
    for user in ("u1", "u2", "u3"):
        lists.users_by_credits.add(user, 1.0)
    metrics = build_metrics(list(Category), {**providers_results(), **models_results()}, HEALTH, 2, lists)
    # the models' calls replace the providers': a and b called, c and d known by their health
    assert metrics.providers is not None and metrics.providers.total_providers == 4
    assert metrics.providers.providers[0].state == "degraded"
    assert metrics.models is not None and metrics.models.total_models == 5
    assert metrics.business is not None and len(metrics.business.top_users_by_credits) == 2
    assert metrics.business.total_cost_usd == 1.75
    assert metrics.performance is not None and metrics.system is not None
