"""The recording helpers: what they record, bad input, label caps, top-N lists."""

from __future__ import annotations

import asyncio
import random
import string

import pytest

from app import metrics
from app import telemetry as telemetry_module
from app.catalogue import FAMILIES_BY_NAME, Label
from app.recording import inference_status
from app.registry import BoundedMetric, clean_label_value
from app.scoring import HealthTracker
from app.settings import Settings
from app.telemetry import Telemetry
from app.topn import SpaceSaving, key_fingerprint
from tests.conftest import sample


def calls(provider: str, model: str, status: str) -> float:
    return sample("model_inference_requests_total", {"provider": provider, "model": model, "status": status})


def rejected(helper: str, reason: str) -> float:
    return sample("gatewayz_recording_rejected_total", {"helper": helper, "reason": reason})


def test_track_model_inference_records_success_and_duration() -> None:
    with metrics.track_model_inference("rec-openai", "gpt-4o") as call:
        call.first_token()
    assert calls("rec-openai", "gpt-4o", "success") == 1
    assert sample("model_inference_duration_seconds_count", {"provider": "rec-openai", "model": "gpt-4o"}) == 1
    assert sample("provider_response_time_seconds_count", {"provider": "rec-openai"}) == 1
    assert sample("gatewayz_time_to_first_token_seconds_count", {"provider": "rec-openai", "model": "gpt-4o"}) == 1


def test_exception_in_the_block_is_a_failure_and_propagates() -> None:
    with pytest.raises(TimeoutError):
        with metrics.track_model_inference("rec-fail", "m"):
            raise TimeoutError("read timed out")
    assert calls("rec-fail", "m", "timeout") == 1


def test_a_cancelled_call_is_no_verdict_on_the_provider() -> None:
    from app.scoring import get_tracker

    with pytest.raises(asyncio.CancelledError):
        with metrics.track_model_inference("rec-cancel", "m"):
            raise asyncio.CancelledError
    assert calls("rec-cancel", "m", "unknown") == 1
    health = get_tracker().status("rec-cancel")
    assert health.calls == 0 and health.in_flight == 0


def test_status_code_marks_the_call() -> None:
    with metrics.track_model_inference("rec-code", "m") as call:
        call.status_code = 429
    assert calls("rec-code", "m", "rate_limit_error") == 1


@pytest.mark.parametrize(
    ("status_code", "error", "expected"),
    [
        (None, None, "success"),
        (200, None, "success"),
        (400, None, "invalid_request_error"),
        (401, None, "authentication_error"),
        (403, None, "authentication_error"),
        (404, None, "not_found_error"),
        (429, None, "rate_limit_error"),
        (500, None, "server_error"),
        (502, None, "service_unavailable"),
        (503, None, "service_unavailable"),
        (504, None, "timeout"),
        (418, None, "invalid_request_error"),
        (None, "timeout", "timeout"),
        (None, TimeoutError(), "timeout"),
        (None, ConnectionRefusedError(), "service_unavailable"),
        (None, ValueError(), "server_error"),
        (None, asyncio.CancelledError(), "unknown"),
        (None, "server_error", "server_error"),
        (None, "stream_broken", "server_error"),
        (None, "connection", "service_unavailable"),
        (None, ConnectionResetError(), "service_unavailable"),
    ],
)
def test_inference_status(status_code: int | None, error: object, expected: str) -> None:
    assert inference_status(status_code, error) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status_code", "expected"),
    [(500.0, "server_error"), ("503", "service_unavailable"), (" 429 ", "rate_limit_error"),
     (200.0, "success"), (500.5, "success"), ("abc", "success"), (True, "success")],
)
def test_loosely_typed_status_codes_mean_their_integer(status_code: object, expected: str) -> None:
    assert inference_status(status_code) == expected  # type: ignore[arg-type]


def test_a_float_5xx_counts_against_the_provider() -> None:
    tracker = HealthTracker()
    for _ in range(10):
        tracker.record("floaty", duration_s=0.1, status_code=500.0)  # type: ignore[arg-type]
    assert tracker.status("floaty").error_rate == 1.0


def test_exception_carrying_a_status_code_is_classified_by_it() -> None:
    class APIStatusError(Exception):
        status_code = 500

    class OverloadedError(Exception):
        status_code = 529  # Anthropic's overloaded: a throttle

    assert inference_status(None, APIStatusError()) == "server_error"
    assert inference_status(None, OverloadedError()) == "rate_limit_error"


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "input_kept", "output_kept", "reason"),
    [
        (-5, 10, 0, 10, "negative"),
        (None, 7, 0, 7, None),
        ("12", 3, 0, 3, "not_a_number"),
        (float("nan"), 4, 0, 4, "not_finite"),
        (True, 2, 0, 2, "not_a_number"),
        (5.0, float("inf"), 5, 0, "not_finite"),
    ],
)
def test_bad_token_counts_are_dropped_and_counted(
    input_tokens: object, output_tokens: object, input_kept: float, output_kept: float, reason: str | None
) -> None:
    model = f"m-{random.random()}"
    metrics.record_tokens_used("rec-tokens", model, input_tokens, output_tokens)
    labels = {"provider": "rec-tokens", "model": model}
    assert sample("tokens_used_total", {**labels, "token_type": "input"}) == input_kept
    assert sample("tokens_used_total", {**labels, "token_type": "output"}) == output_kept
    if reason:
        assert rejected("record_tokens_used", reason) == 1


@pytest.mark.parametrize("bad", [None, "", "   ", 3.5, object(), ["list"], {"a": 1}, b"bytes"])
def test_bad_label_values_never_raise(bad: object) -> None:
    metrics.record_tokens_used(bad, bad, 1, 1)
    metrics.record_credits_used(bad, bad, bad, 1.0)
    metrics.record_cache_hit(bad)
    metrics.record_cache_miss(bad)
    metrics.record_rate_limited(bad)
    metrics.record_api_key_usage(bad, bad)
    metrics.record_database_query(bad, bad, bad)
    metrics.record_time_to_first_token(bad, bad, bad)
    metrics.record_provider_cost(bad, bad)
    metrics.record_routing_decision(bad)
    metrics.set_queue_size(bad, bad)
    metrics.set_active_subscriptions(bad, bad, 1)
    with metrics.track_model_inference(bad, bad):
        pass
    with metrics.track_database_query(bad, bad):
        pass
    with metrics.track_http_request(bad, bad):
        pass
    # docs/EMBEDDING.md: a label value that is None, empty (blank) or of a wrong type records as
    # "unknown", an enum as its fallback; a number records as its text. Non-numbers passed
    # as a count, cost or duration are dropped and counted.
    text = "3.5" if isinstance(bad, float) else "unknown"
    expected = {
        "tokens_used_total": [{"provider": text, "model": text, "token_type": "input"},
                              {"provider": text, "model": text, "token_type": "output"}],
        "credits_used_total": [{"provider": text, "model": text}],
        "cache_hits_total": [{"cache_name": text}],
        "cache_misses_total": [{"cache_name": text}],
        "rate_limited_requests_total": [{"limit_type": text}],
        "api_key_usage_total": [{"status": text}],
        "gatewayz_routing_decisions_total": [{"outcome": "unknown"}],  # an enum: its fallback
        "active_subscriptions": [{"plan": text, "billing_cycle": text}],
        "model_inference_requests_total": [{"provider": text, "model": text, "status": "success"}],
        "http_requests_total": [{"method": "OTHER", "endpoint": text, "status_code": "200"}],
    }
    for name, label_sets in expected.items():
        assert recorded_series(name) == {frozenset(labels.items()): 1.0 for labels in label_sets}, name
    # record_database_query and track_database_query: one series, counted twice.
    assert recorded_series("database_queries_total") == {frozenset({"table": text, "operation": text}.items()): 2.0}
    numeric_helpers = ["record_database_query", "record_time_to_first_token", "record_provider_cost", "set_queue_size"]
    assert [rejected(helper, "not_a_number") for helper in numeric_helpers] == [0 if text == "3.5" else 1] * 4


def recorded_series(name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample named ``name`` in the default telemetry's registry, by its labels."""
    registry = telemetry_module.default().metrics.all_registry
    return {frozenset(s.labels.items()): s.value for family in registry.collect() for s in family.samples
            if s.name == name}


def test_none_labels_record_as_unknown() -> None:
    metrics.record_cache_hit(None)
    assert sample("cache_hits_total", {"cache_name": "unknown"}) == 1


def test_enum_labels_fall_back() -> None:
    routing = FAMILIES_BY_NAME["gatewayz_routing_decisions_total"].labels[0]
    assert clean_label_value(routing, "FAILOVER") == "failover"
    assert clean_label_value(routing, "sideways") == "unknown"
    method = FAMILIES_BY_NAME["http_requests_total"].labels[0]
    assert clean_label_value(method, "get") == "GET"
    assert clean_label_value(method, "PROPFIND") == "OTHER"


def test_thousands_of_random_model_names_stay_under_the_cap() -> None:
    family = FAMILIES_BY_NAME["model_inference_requests_total"]
    overflow = BoundedMetric(FAMILIES_BY_NAME["gatewayz_label_overflow_total"], 100, None)
    requests = BoundedMetric(family, label_cap=50, overflow=overflow)
    rng = random.Random(7)
    for _ in range(5000):
        name = "".join(rng.choices(string.ascii_letters, k=16))
        requests.child("openai", name, "success").inc()
    models = {s.labels["model"] for m in requests.metric.collect() for s in m.samples}
    assert len(models) == 51  # 50 distinct values, then "other"
    assert "other" in models
    total = sum(s.value for m in requests.metric.collect() for s in m.samples)
    assert total == 5000  # nothing lost: the overflow records under "other"
    overflowed = sum(s.value for m in overflow.metric.collect() for s in m.samples)
    assert overflowed == 5000 - 50


def test_process_cap_applies_to_the_shared_registry() -> None:
    # The default telemetry's cap applies to what the module helpers record.
    telemetry_module.set_default(Telemetry(Settings(label_cap=3)))
    assert telemetry_module.default().metrics["cache_misses_total"].label_cap == 3
    for n in range(10):
        metrics.record_cache_miss(f"cap-test-{n}-{random.random()}")
    after = sample("gatewayz_label_overflow_total", {"metric": "cache_misses_total", "label": "cache_name"})
    assert after == 7
    assert sample("cache_misses_total", {"cache_name": "other"}) == 7


def test_credits_feed_bounded_top_lists_with_fingerprinted_keys() -> None:
    top_lists = telemetry_module.default().top_lists
    metrics.record_credits_used("p", "m", "small-user", 1.0, api_key="sk-live-small")
    metrics.record_credits_used("p", "m", "top-user", 250.0, api_key="sk-live-very-secret")
    users = [(hit.key, hit.value) for hit in top_lists.users_by_credits.top(3)]
    keys = [(hit.key, hit.value) for hit in top_lists.keys_by_credits.top(3)]
    assert users == [("top-user", 250.0), ("small-user", 1.0)]
    assert keys == [(key_fingerprint("sk-live-very-secret"), 250.0), (key_fingerprint("sk-live-small"), 1.0)]
    assert all("secret" not in key and "small" not in key for key, _ in keys)


def test_space_saving_keeps_heavy_hitters_in_fixed_memory() -> None:
    table = SpaceSaving(capacity=20)
    rng = random.Random(3)
    for n in range(20_000):
        table.add(f"tail-{n}", 1.0)
        if rng.random() < 0.1:
            table.add(rng.choice(["whale-a", "whale-b", "whale-c"]), 10.0)
    top = table.top(3)
    assert {hit.key for hit in top} == {"whale-a", "whale-b", "whale-c"}
    assert len(table._values) < 40  # noqa: SLF001 - the memory bound is the point
    for hit in top:
        assert hit.value - hit.error <= 20_000 * 0.1 * 10 / 3 * 1.2


def test_label_value_is_what_a_family_records() -> None:
    label = Label("model")
    assert clean_label_value(label, "  gpt-4o  ") == "gpt-4o"
    assert clean_label_value(label, "x" * 500) == "x" * 200
    assert clean_label_value(label, 42) == "42"


def test_balance_may_be_negative_other_gauges_not() -> None:
    metrics.set_user_credit_balance("overdraft-plan", -12.5)
    assert sample("user_credit_balance", {"plan_type": "overdraft-plan"}) == -12.5
    metrics.set_queue_size("q", -1)
    assert rejected("set_queue_size", "negative") == 1
    assert sample("queue_size", {"queue_name": "q"}) == 0


# --- usage and time per output token ------------------------------------------------------

def tokens(provider: str, model: str, token_type: str) -> float:
    return sample("tokens_used_total", {"provider": provider, "model": model, "token_type": token_type})


def tpot(provider: str, model: str, suffix: str) -> float:
    return sample(f"gatewayz_time_per_output_token_seconds_{suffix}", {"provider": provider, "model": model})


def test_record_upstream_call_takes_the_usage_and_records_time_per_output_token() -> None:
    metrics.record_upstream_call("tp-openai", "gpt-4o", duration_s=2.5, ttft_s=0.5, input_tokens=100, output_tokens=41)
    assert tokens("tp-openai", "gpt-4o", "input") == 100
    assert tokens("tp-openai", "gpt-4o", "output") == 41
    assert tpot("tp-openai", "gpt-4o", "count") == 1
    assert tpot("tp-openai", "gpt-4o", "sum") == pytest.approx((2.5 - 0.5) / 40)


@pytest.mark.parametrize(("ttft_s", "output_tokens", "status_code"), [
    (None, 41, None),   # not streamed: no first token
    (0.5, 1, None),     # one output token: no pace after the first
    (0.5, 41, 500),     # a failed call: no completion's pace
])
def test_time_per_output_token_needs_a_successful_stream_of_two_tokens(
    ttft_s: float | None, output_tokens: int, status_code: int | None
) -> None:
    metrics.record_upstream_call("tp-x", "m", duration_s=2.5, ttft_s=ttft_s, status_code=status_code,
                                 input_tokens=10, output_tokens=output_tokens)
    assert tpot("tp-x", "m", "count") == 0
    assert tokens("tp-x", "m", "output") == output_tokens


def test_call_usage_records_the_tokens_once_with_the_last_values() -> None:
    with metrics.track_model_inference("tp-call", "m") as call:
        call.first_token()
        call.usage(10, 3)
        call.usage(12, 5)       # a later chunk reports the final usage
        call.usage(None, None)  # nothing new: kept
    call.usage(99, 99)          # after the call was recorded with its usage: ignored
    assert tokens("tp-call", "m", "input") == 12
    assert tokens("tp-call", "m", "output") == 5
    assert tpot("tp-call", "m", "count") == 1


def test_call_usage_after_the_block_is_recorded_once_with_its_pace() -> None:
    with metrics.track_model_inference("tp-late", "m") as call:
        call.first_token()
    call.usage(7, 9)
    call.usage(7, 9)
    assert tokens("tp-late", "m", "input") == 7
    assert tokens("tp-late", "m", "output") == 9
    assert tpot("tp-late", "m", "count") == 1
    assert calls("tp-late", "m", "success") == 1


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "12", None.__class__, 10**400])
def test_bad_token_counts_are_dropped_and_counted_never_raised(bad: object) -> None:
    with metrics.track_model_inference("tp-bad", "m") as call:
        call.first_token()
        call.usage(bad, 20)
    metrics.record_upstream_call("tp-bad", "m", duration_s=1.0, ttft_s=0.1, input_tokens=5, output_tokens=bad)
    assert tokens("tp-bad", "m", "input") == 5
    assert tokens("tp-bad", "m", "output") == 20
    assert tpot("tp-bad", "m", "count") == 1
    assert calls("tp-bad", "m", "success") == 2
    assert sum(rejected("record_tokens_used", reason)
               for reason in ("negative", "not_finite", "not_a_number", "too_large")) == 2


def test_a_first_token_after_the_end_gives_no_time_per_output_token() -> None:
    metrics.record_upstream_call("tp-neg", "m", duration_s=1.0, ttft_s=2.0, output_tokens=10)
    assert tpot("tp-neg", "m", "count") == 0
    assert rejected("time_per_output_token", "negative") == 1
