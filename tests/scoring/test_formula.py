"""The score, Apdex, outcome classes and rate-limit hints on hand-made cases (SPEC section 5)."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import ValidationError

from app.scoring import (
    HealthConfig,
    HealthTracker,
    Outcome,
    State,
    apdex,
    apdex_zone,
    classify,
    health_score,
    parse_duration,
)
from tests.scoring.fake_clock import WALL_START, FakeClock  # noqa: F401


def cooldown_s(tracker: HealthTracker, clock: FakeClock, provider: str) -> float:
    """Seconds from now until the provider's rate-limit cooldown ends (0 when none runs)."""
    until = tracker.status(provider).rate_limited_until
    return 0.0 if until is None else until.timestamp() - clock.wall()


# --- the formula ---------------------------------------------------------------------------


def test_score_of_a_perfect_provider_is_one() -> None:
    assert health_score(1.0, 0.0, 1.0) == pytest.approx(1.0)


def test_score_weights_availability_errors_and_latency_04_03_03() -> None:
    assert health_score(0.5, 0.2, 0.75) == pytest.approx(0.4 * 0.5 + 0.3 * 0.8 + 0.3 * 0.75)
    assert health_score(0.5, 0.2, 0.75) == pytest.approx(0.665)


def test_score_of_each_component_alone() -> None:
    assert health_score(1.0, 1.0, 0.0) == pytest.approx(0.4)
    assert health_score(0.0, 0.0, 0.0) == pytest.approx(0.3)
    assert health_score(0.0, 1.0, 1.0) == pytest.approx(0.3)
    assert health_score(0.0, 1.0, 0.0) == pytest.approx(0.0)


def test_score_takes_configured_weights() -> None:
    assert health_score(1.0, 0.5, 0.0, weights=(0.2, 0.6, 0.2)) == pytest.approx(0.2 + 0.3)


def test_components_out_of_range_are_clamped() -> None:
    assert health_score(1.7, -0.5, 3.0) == pytest.approx(1.0)
    assert health_score(-1.0, 2.0, -4.0) == pytest.approx(0.0)
    # Each component on its own: availability 2 counts as 1, error rate 3 as 1, latency 5 as 1.
    assert health_score(2.0, 1.0, 0.0) == pytest.approx(0.4)
    assert health_score(0.0, 3.0, 0.0) == pytest.approx(0.0)
    assert health_score(0.0, 1.0, 5.0) == pytest.approx(0.3)


def test_the_score_stays_in_0_1_whatever_the_weights() -> None:
    assert health_score(1.0, 0.0, 1.0, weights=(1.0, 1.0, 1.0)) == 1.0
    assert health_score(1.0, 0.0, 1.0, weights=(-1.0, -1.0, -1.0)) == 0.0


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.3), (0.4, 0.3, 0.2), (1.2, -0.1, -0.1)])
def test_weights_must_be_non_negative_and_sum_to_one(weights: tuple[float, float, float]) -> None:
    with pytest.raises(ValidationError):
        HealthConfig(weights=weights)


def test_config_accepts_weights_summing_to_one() -> None:
    assert HealthConfig(weights=(0.5, 0.25, 0.25)).weights == (0.5, 0.25, 0.25)


# --- Apdex ---------------------------------------------------------------------------------


def test_apdex_of_no_samples_is_one() -> None:
    assert apdex([], 2.0) == 1.0


def test_apdex_counts_satisfied_and_half_the_tolerating() -> None:
    # T = 2: satisfied <= 2 (boundary included), tolerating <= 8, frustrated beyond.
    durations = [0.1, 2.0, 2.1, 8.0, 8.1, math.inf]
    assert apdex(durations, 2.0) == pytest.approx((2 + 2 / 2) / 6)


def test_apdex_all_frustrated_is_zero() -> None:
    assert apdex([9.0, 30.0, math.inf], 2.0) == 0.0


@pytest.mark.parametrize(
    ("duration", "zone"),
    [(0.0, "satisfied"), (2.0, "satisfied"), (2.01, "tolerating"), (8.0, "tolerating"),
     (8.01, "frustrated"), (math.inf, "frustrated")],
)
def test_apdex_zone_boundaries(duration: float, zone: str) -> None:
    assert apdex_zone(duration, 2.0) == zone


# --- the tracker's components on hand-made traffic -----------------------------------------


def test_components_and_score_of_a_hand_made_window(tracker: HealthTracker) -> None:
    for _ in range(6):
        tracker.record("p", duration_s=0.5)  # satisfied
    tracker.record("p", duration_s=5.0)  # tolerating
    tracker.record("p", duration_s=3.0, status_code=200)  # tolerating
    tracker.record("p", duration_s=1.0, status_code=500)  # reached, failed, frustrated
    tracker.record("p", duration_s=30.0, error="timeout")  # not reached, failed, frustrated

    health = tracker.status("p")

    assert health.calls == 10
    assert health.availability == pytest.approx(9 / 10)
    assert health.error_rate == pytest.approx(2 / 10)
    assert health.latency_score == pytest.approx((6 + 2 / 2) / 10)
    assert health.score == pytest.approx(0.4 * 0.9 + 0.3 * 0.8 + 0.3 * 0.7)
    assert health.state is State.HEALTHY  # 0.81 >= 0.8
    assert health.circuit == "closed"


def test_streamed_call_is_judged_on_time_to_first_token(tracker: HealthTracker) -> None:
    zone = tracker.record("p", duration_s=40.0, ttft_s=0.4)

    assert zone == "satisfied"
    assert tracker.status("p").latency_score == 1.0


def test_unstreamed_call_is_judged_on_total_duration(tracker: HealthTracker) -> None:
    assert tracker.record("p", duration_s=5.0) == "tolerating"
    assert tracker.record("p", duration_s=9.0) == "frustrated"
    assert tracker.status("p").latency_score == pytest.approx(0.25)


def test_failed_call_is_frustrated_however_fast(tracker: HealthTracker) -> None:
    assert tracker.record("p", duration_s=0.01, status_code=500) == "frustrated"


def test_apdex_threshold_per_provider_overrides_the_global_one(clock: FakeClock) -> None:
    tracker = HealthTracker(HealthConfig(apdex_thresholds={"batch": 10.0}), clock=clock, wall_clock=clock.wall)

    assert tracker.record("batch", duration_s=8.0) == "satisfied"
    assert tracker.record("chat", duration_s=8.0) == "tolerating"


def test_provider_failing_every_call_unreached_scores_zero(tracker: HealthTracker) -> None:
    for error in ("timeout", "connect error", "timeout", "connect error"):  # 4: circuit still closed
        tracker.record("p", duration_s=0.2, error=error)

    health = tracker.status("p")

    assert health.circuit == "closed"
    assert (health.availability, health.error_rate, health.latency_score) == (0.0, 1.0, 0.0)
    assert health.score == 0.0
    assert health.state is State.UNAVAILABLE


def test_provider_failing_every_call_scores_zero_once_its_circuit_opens(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.2, status_code=500)

    health = tracker.status("p")

    assert health.circuit == "open"
    assert (health.availability, health.error_rate, health.latency_score) == (0.0, 1.0, 0.0)
    assert health.score == 0.0


def test_no_data_scores_one_and_is_unknown(tracker: HealthTracker) -> None:
    health = tracker.status("new")

    assert health.score == 1.0
    assert health.state is State.UNKNOWN
    assert health.circuit == "closed"
    assert health.calls == 0
    assert health.rate_limited_until is None


def test_calls_leave_the_window_after_window_s(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.5, status_code=500)
    clock.advance(59.0)
    assert tracker.status("p").calls == 1

    clock.advance(2.0)
    health = tracker.status("p")

    assert health.calls == 0
    assert (health.score, health.state) == (1.0, State.UNKNOWN)


@pytest.mark.parametrize("status_code", [400, 409, 413, 422])
def test_callers_own_4xx_counts_as_a_success(tracker: HealthTracker, status_code: int) -> None:
    assert tracker.record("p", duration_s=0.3, status_code=status_code) == "satisfied"

    health = tracker.status("p")

    assert (health.calls, health.error_rate, health.availability, health.score) == (1, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(("status_code", "error_code"), [(429, None), (429, "insufficient_quota"), (401, None),
                                                         (403, None), (404, None), (529, None)])
def test_unscored_outcomes_return_no_zone_and_leave_the_score(
    tracker: HealthTracker, status_code: int, error_code: str | None
) -> None:
    tracker.record("p", duration_s=0.5)

    assert tracker.record("p", duration_s=0.1, status_code=status_code, error_code=error_code) is None
    health = tracker.status("p")
    assert (health.calls, health.score, health.error_rate) == (1, 1.0, 0.0)


# --- outcome classes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_code", "error", "error_code", "outcome"),
    [
        (200, None, None, Outcome.SUCCESS),
        (None, None, None, Outcome.SUCCESS),
        (500, None, None, Outcome.FAILURE),
        (501, None, None, Outcome.FAILURE),
        (599, None, None, Outcome.FAILURE),
        (502, None, None, Outcome.UNREACHED),
        (503, None, None, Outcome.UNREACHED),
        (504, None, None, Outcome.UNREACHED),
        (408, None, None, Outcome.UNREACHED),
        (None, "timeout", None, Outcome.UNREACHED),
        (None, TimeoutError(), None, Outcome.UNREACHED),
        (None, httpx.ReadTimeout("read"), None, Outcome.UNREACHED),
        (None, httpx.ConnectTimeout("connect"), None, Outcome.UNREACHED),
        (None, httpx.ConnectError("refused"), None, Outcome.UNREACHED),
        (None, ConnectionRefusedError(), None, Outcome.UNREACHED),
        (None, ConnectionResetError(), None, Outcome.UNREACHED),
        (None, "stream_broken", None, Outcome.FAILURE),
        (200, "stream_broken", None, Outcome.FAILURE),
        (None, RuntimeError("boom"), None, Outcome.FAILURE),
        (429, None, None, Outcome.THROTTLED),
        (529, None, None, Outcome.THROTTLED),
        (None, "overloaded_error", None, Outcome.THROTTLED),
        (None, "RateLimitError", None, Outcome.THROTTLED),
        (429, None, "rate_limit_exceeded", Outcome.THROTTLED),
        (429, None, "insufficient_quota", Outcome.QUOTA),
        (429, None, "billing_hard_limit_reached", Outcome.QUOTA),
        (429, None, "BILLING_NOT_ACTIVE", Outcome.QUOTA),
        (None, "RateLimitError", "insufficient_quota", Outcome.QUOTA),
        (401, None, None, Outcome.CREDENTIAL),
        (403, None, None, Outcome.CREDENTIAL),
        (404, None, None, Outcome.NOT_FOUND),
        (400, None, None, Outcome.CLIENT_ERROR),
        (409, None, None, Outcome.CLIENT_ERROR),
        (413, None, None, Outcome.CLIENT_ERROR),
        (422, "validation", None, Outcome.CLIENT_ERROR),
        (None, "service_unavailable", None, Outcome.UNREACHED),
        (None, "invalid_request_error", None, Outcome.CLIENT_ERROR),
        (None, "rate_limit_error", "insufficient_quota", Outcome.QUOTA),
    ],
)
def test_classify(status_code: int | None, error: BaseException | str | None, error_code: str | None,
                  outcome: Outcome) -> None:
    assert classify(status_code, error, error_code) is outcome


# --- rate-limit hints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m", 3720.0), ("2.5", 2.5), ("0.5s", 0.5),
     (" 7 ", 7.0), ("1m30s", 90.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1x", "s"])
def test_parse_duration_rejects_what_it_cannot_read(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_seconds_argument_sets_the_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=7)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(7.0)


def test_retry_after_header_in_seconds(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, headers={"Retry-After": "12"})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(12.0)


def test_retry_after_header_as_http_date_uses_the_wall_clock(tracker: HealthTracker, clock: FakeClock) -> None:
    date = email.utils.formatdate(clock.wall() + 45, usegmt=True)

    tracker.record("p", duration_s=0.1, status_code=429, headers={"retry-after": date})

    until = tracker.status("p").rate_limited_until
    assert until == datetime.fromtimestamp(WALL_START + 45, UTC)


def test_retry_after_ms_header(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, headers={"retry-after-ms": "2500"})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(2.5)


@pytest.mark.parametrize(("header", "value", "seconds"),
                         [("x-ratelimit-reset-requests", "20s", 20.0), ("x-ratelimit-reset-tokens", "1m30s", 90.0),
                          ("X-RateLimit-Reset-Requests", "6.5", 6.5)])
def test_reset_hints(tracker: HealthTracker, clock: FakeClock, header: str, value: str, seconds: float) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, headers={header: value})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(seconds)


def test_largest_hint_wins_and_is_named_in_reasons(tracker: HealthTracker, clock: FakeClock) -> None:
    headers = {"retry-after": "2", "retry-after-ms": "5000", "x-ratelimit-reset-requests": "1s",
               "x-ratelimit-reset-tokens": "12s"}

    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=3, headers=headers)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(12.0)
    assert "throttled until 22:13:32 by x-ratelimit-reset-tokens" in tracker.status("p").reasons


@pytest.mark.parametrize(("headers", "seconds"),
                         [({"retry-after": "0"}, 1.0), ({"retry-after-ms": "20"}, 1.0),
                          ({"retry-after": "3600"}, 300.0), ({"x-ratelimit-reset-tokens": "6m0s"}, 300.0),
                          ({"retry-after": "-5"}, 1.0)])
def test_cooldown_is_clamped_to_1_and_300_seconds(
    tracker: HealthTracker, clock: FakeClock, headers: dict[str, str], seconds: float
) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, headers=headers)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(seconds)


def test_http_date_in_the_past_is_clamped_to_the_minimum(tracker: HealthTracker, clock: FakeClock) -> None:
    date = email.utils.formatdate(clock.wall() - 60, usegmt=True)

    tracker.record("p", duration_s=0.1, status_code=429, headers={"Retry-After": date})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(1.0)


def test_without_hints_the_backoff_starts_at_1s_and_doubles(tracker: HealthTracker, clock: FakeClock) -> None:
    waits = []
    for _ in range(4):
        tracker.record("p", duration_s=0.1, status_code=429)
        assert any(reason.endswith("by backoff (no hint)") for reason in tracker.status("p").reasons)
        wait = cooldown_s(tracker, clock, "p")
        waits.append(wait)
        clock.advance(wait)

    assert waits == pytest.approx([1.0, 2.0, 4.0, 8.0])


def test_a_success_resets_the_backoff(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(3):
        tracker.record("p", duration_s=0.1, status_code=429)
        clock.advance(cooldown_s(tracker, clock, "p"))

    tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.1, status_code=429)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(1.0)


def test_backoff_is_capped_at_300_seconds(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(12):
        tracker.record("p", duration_s=0.1, status_code=429)
        clock.advance(cooldown_s(tracker, clock, "p"))

    tracker.record("p", duration_s=0.1, status_code=429)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(300.0)


def test_later_shorter_hint_never_shortens_a_running_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=60)
    clock.advance(10.0)

    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=5)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(50.0)
    assert "throttled until 22:14:20 by Retry-After" in tracker.status("p").reasons


def test_later_longer_hint_extends_a_running_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=5)
    clock.advance(2.0)

    tracker.record("p", duration_s=0.1, status_code=429, headers={"retry-after-ms": "30000"})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(30.0)


def test_overloaded_529_throttles_like_a_429(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=529, retry_after_s=4)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(4.0)
    assert tracker.status("p").calls == 0


@pytest.mark.parametrize("bad", ["nan", "NaN", "-5", "inf", "1e400", "999999999", "soon", ""])
def test_a_bad_hint_never_drops_a_valid_one_beside_it(tracker: HealthTracker, clock: FakeClock, bad: str) -> None:
    headers = {"retry-after-ms": bad, "retry-after": bad, "x-ratelimit-reset-tokens": bad,
               "x-ratelimit-reset-requests": "30s"}

    tracker.record("p", duration_s=0.1, status_code=429, headers=headers)

    assert cooldown_s(tracker, clock, "p") == pytest.approx(30.0)
    assert "throttled until 22:13:50 by x-ratelimit-reset-requests" in tracker.status("p").reasons


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), 1e300])
def test_a_bad_retry_after_argument_is_ignored(tracker: HealthTracker, clock: FakeClock, bad: float) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=bad, headers={"retry-after": "7"})

    assert cooldown_s(tracker, clock, "p") == pytest.approx(7.0)


@pytest.mark.parametrize("text", ["nan", "-1", "inf", "-inf", "1e400", "100000h"])
def test_parse_duration_refuses_nan_negative_and_huge(text: str) -> None:
    assert parse_duration(text) is None
