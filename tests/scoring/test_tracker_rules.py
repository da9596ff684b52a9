"""HealthTracker.status: the components, states and reasons of SPEC section 5 and
docs/HEALTH.md ("States", "reasons"), on hand-made windows with hand-computed numbers.

The fake clock starts at 1000 s, which the wall clock reads as 22:13:20 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.scoring import HealthConfig, HealthTracker, State
from tests.scoring.fake_clock import WALL_START, FakeClock


def make(clock: FakeClock, **config: object) -> HealthTracker:
    return HealthTracker(HealthConfig(**config), clock=clock, wall_clock=clock.wall)  # type: ignore[arg-type]


def fail(tracker: HealthTracker, times: int, provider: str = "p", **kwargs: object) -> None:
    for _ in range(times):
        tracker.record(provider, duration_s=0.1, **{"status_code": 503, **kwargs})  # type: ignore[arg-type]


# --- components ----------------------------------------------------------------------------------


def test_every_field_of_a_hand_made_window(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.5)  # satisfied
    for _ in range(2):
        tracker.record("p", duration_s=12.0)  # frustrated, and slow (over 10 s)
    tracker.record("p", duration_s=5.0)  # tolerating
    tracker.record("p", duration_s=0.2, status_code=500)  # failed, reached
    tracker.record("p", duration_s=0.2, error="timeout")  # failed, not reached

    health = tracker.status("p")

    # availability 9/10; error rate 2/10; Apdex (5 + 1/2) / 10 = 0.55
    # score 0.4 * 0.9 + 0.3 * 0.8 + 0.3 * 0.55 = 0.36 + 0.24 + 0.165 = 0.765: degraded
    assert (health.provider, health.calls, health.probes) == ("p", 10, 0)
    assert health.availability == pytest.approx(0.9)
    assert health.error_rate == pytest.approx(0.2)
    assert health.latency_score == pytest.approx(0.55)
    assert health.score == pytest.approx(0.765)
    assert health.slow_call_rate == pytest.approx(0.2)
    assert health.state is State.DEGRADED
    assert health.circuit == "closed"
    assert health.rate_limited_until is None
    assert (health.in_flight, health.credential_errors, health.not_found_errors) == (0, 0, 0)
    assert health.reasons == ["2 of 10 calls failed in the last 60 s", "Apdex 0.55 (T = 2 s)"]


def test_a_provider_known_only_by_failed_probes_has_no_error_rate(tracker: HealthTracker) -> None:
    tracker.record_probe("p", False)

    health = tracker.status("p")

    # availability 0 of 1 probe; no calls: error rate 0, Apdex 1; 0 + 0.3 + 0.3 = 0.6
    assert (health.calls, health.probes) == (0, 1)
    assert (health.availability, health.error_rate, health.latency_score) == (0.0, 0.0, 1.0)
    assert health.score == pytest.approx(0.6)
    assert health.slow_call_rate == 0.0  # no calls, none slow
    assert health.state is State.DEGRADED
    assert health.reasons == []


def test_probes_and_calls_share_the_availability(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.5, error="connect")
    tracker.record_probe("p", True)
    tracker.record_probe("p", False)

    health = tracker.status("p")

    assert health.availability == pytest.approx(2 / 4)  # one call and one probe reached it
    assert health.error_rate == pytest.approx(1 / 2)  # probes are not calls


def test_the_numbers_are_rounded_to_six_places(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=12.0)  # reached, slow, frustrated
    tracker.record("p", duration_s=0.5)  # reached, satisfied
    tracker.record("p", duration_s=0.5, error="timeout")  # unreached, failed

    health = tracker.status("p")

    # availability 2/3, error rate 1/3, Apdex 1/3, slow 1/3; 0.4 * 2/3 + 0.3 * 2/3 + 0.3 * 1/3 = 0.5666...
    assert health.availability == 0.666667
    assert health.error_rate == 0.333333
    assert health.latency_score == 0.333333
    assert health.slow_call_rate == 0.333333
    assert health.score == 0.566667


# --- states ------------------------------------------------------------------------------------


def test_no_data_is_unknown_with_score_one(tracker: HealthTracker) -> None:
    health = tracker.status("new")

    assert (health.score, health.state, health.calls, health.probes) == (1.0, State.UNKNOWN, 0, 0)
    assert (health.availability, health.error_rate, health.latency_score) == (1.0, 0.0, 1.0)
    assert health.reasons == ["no calls in the window yet"]
    assert tracker.snapshot() == []  # a question creates no state


@pytest.mark.parametrize(
    ("healthy", "degraded", "state"),
    # one window: 10 calls of 5 s, all tolerating: score 0.4 + 0.3 + 0.3 * 0.5 = 0.85
    [(0.85, 0.5, State.HEALTHY), (0.86, 0.5, State.DEGRADED), (0.9, 0.85, State.DEGRADED),
     (0.95, 0.86, State.UNAVAILABLE)],
)
def test_state_thresholds_are_inclusive_and_configurable(
    clock: FakeClock, healthy: float, degraded: float, state: State
) -> None:
    tracker = make(clock, healthy_score=healthy, degraded_score=degraded, slow_call_s=60.0)
    for _ in range(10):
        tracker.record("p", duration_s=5.0)

    health = tracker.status("p")

    assert health.score == 0.85
    assert health.state is state


def test_a_closed_circuit_failing_every_call_unreached_is_unavailable(clock: FakeClock) -> None:
    tracker = make(clock, consecutive_failures=100, min_calls=100)
    # 4 timeouts: availability 0, error rate 1, Apdex 0: score 0
    fail(tracker, 4, error="timeout", status_code=None)

    assert tracker.status("p").circuit == "closed"
    assert (tracker.status("p").score, tracker.status("p").state) == (0.0, State.UNAVAILABLE)


def test_half_the_probes_failing_scores_exactly_0_8_and_healthy(tracker: HealthTracker) -> None:
    # 1 of 2 probes reached it and nothing else: 0.4 * 0.5 + 0.3 + 0.3 = 0.8
    tracker.record_probe("q", True)
    tracker.record_probe("q", False)

    assert (tracker.status("q").score, tracker.status("q").state) == (0.8, State.HEALTHY)


def test_exactly_0_5_is_degraded(clock: FakeClock) -> None:
    tracker = make(clock, weights=(1.0, 0.0, 0.0))
    tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.5, error="connect")

    health = tracker.status("p")

    assert health.score == 0.5
    assert health.state is State.DEGRADED


def test_an_open_circuit_is_unavailable_with_availability_zero(clock: FakeClock) -> None:
    tracker = make(clock, weights=(0.0, 0.0, 1.0))  # only latency: the 500s below score 0 anyway
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=500)

    health = tracker.status("p")

    assert health.circuit == "open"
    assert health.availability == 0.0  # though each 500 reached the provider
    assert health.state is State.UNAVAILABLE


def test_a_half_open_circuit_is_degraded_whatever_its_score(clock: FakeClock) -> None:
    tracker = make(clock, weights=(1.0, 0.0, 0.0))
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=500)  # reached: availability 1
    clock.advance(5.0)

    health = tracker.status("p")

    assert health.circuit == "half_open"
    assert health.score == 1.0
    assert health.state is State.DEGRADED


@pytest.mark.parametrize(
    ("slow", "fast", "state"),
    # 12 s calls are slow (over 10 s) and frustrated; 0.5 s calls satisfied.
    # 5 of 10: Apdex 0.5, score 0.85, but half are slow: degraded.
    # 4 of 10: Apdex 0.6, score 0.88, 40% slow: healthy.
    # 5 of 9: under min_calls, so not judged slow; Apdex 4/9, score 0.8333: healthy.
    [(5, 5, State.DEGRADED), (4, 6, State.HEALTHY), (5, 4, State.HEALTHY)],
)
def test_half_the_calls_slow_with_at_least_min_calls_is_degraded(
    clock: FakeClock, slow: int, fast: int, state: State
) -> None:
    tracker = make(clock, healthy_score=0.8)
    for _ in range(slow):
        tracker.record("p", duration_s=12.0)
    for _ in range(fast):
        tracker.record("p", duration_s=0.5)

    health = tracker.status("p")

    assert health.score >= 0.8
    assert health.slow_call_rate == pytest.approx(slow / (slow + fast), abs=1e-6)
    assert health.state is state
    slow_reason = f"slow: {slow / (slow + fast):.0%} of calls over 10 s"
    assert (slow_reason in health.reasons) is (state is State.DEGRADED)


def test_slow_means_over_slow_call_s_on_the_time_to_first_token(clock: FakeClock) -> None:
    tracker = make(clock, apdex_threshold_s=20.0)
    for _ in range(5):
        tracker.record("p", duration_s=10.0)  # exactly 10 s: not slow
    for _ in range(5):
        tracker.record("p", duration_s=30.0, ttft_s=1.0)  # streamed: judged on its first token

    assert tracker.status("p").slow_call_rate == 0.0


def test_a_failure_is_never_slow(clock: FakeClock) -> None:
    tracker = make(clock, consecutive_failures=100, min_calls=100)
    fail(tracker, 3, status_code=500)
    tracker.record("p", duration_s=30.0, status_code=500)

    assert tracker.status("p").slow_call_rate == 0.0


# --- reasons --------------------------------------------------------------------------------------


def test_reasons_of_an_open_circuit(tracker: HealthTracker) -> None:
    fail(tracker, 5)

    health = tracker.status("p")

    assert health.reasons == [
        "circuit open since 22:13:20 after 5 consecutive failures (last: unreached 503); "
        "next trial call at 22:13:25 (cooldown 5 s)",
        "5 of 5 calls failed in the last 60 s",
        "Apdex 0.00 (T = 2 s)",
    ]
    assert (health.score, health.state) == (0.0, State.UNAVAILABLE)


@pytest.mark.parametrize(("kwargs", "what"), [({"status_code": 500}, "failure 500"),
                                              ({"error": "timeout"}, "timeout"),
                                              ({"error": TimeoutError("slow")}, "TimeoutError"),
                                              ({"status_code": 502, "error": "upstream"}, "upstream")])
def test_the_trip_reason_names_the_last_failure(tracker: HealthTracker, kwargs: dict[str, object], what: str) -> None:
    fail(tracker, 4)
    tracker.record("p", duration_s=0.1, **kwargs)  # type: ignore[arg-type]

    assert tracker.status("p").reasons[0].startswith(f"circuit open since 22:13:20 after 5 consecutive failures "
                                                     f"(last: {what}); ")


def test_reasons_of_a_half_open_circuit_count_the_trials(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    clock.advance(5.0)
    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 0 of 3 passed"

    permit = tracker.allow("p")
    assert tracker.status("p").reasons[0] == "circuit half-open: 1 trial call in flight, 0 of 3 passed"

    tracker.record("p", duration_s=0.5, permit=permit)
    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_reasons_of_a_circuit_on_probation(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, 5)
    clock.advance(5.0)
    for _ in range(3):
        tracker.record("p", duration_s=0.5, permit=tracker.allow("p"))

    health = tracker.status("p")

    assert health.reasons == ["circuit closed at 22:13:25, on probation until 22:14:25: a failure sends it "
                              "back to half-open"]
    # The trials proved it back: the window starts afresh from them.
    assert (health.calls, health.score, health.state) == (3, 1.0, State.HEALTHY)

    clock.advance(60.0)
    assert not any("probation" in reason for reason in tracker.status("p").reasons)


def test_reasons_of_a_throttled_provider_and_its_deadline(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=7)

    health = tracker.status("p")

    assert health.reasons == ["throttled until 22:13:27 by Retry-After"]
    assert health.rate_limited_until == datetime.fromtimestamp(WALL_START + 7, UTC)
    assert (health.state, health.calls) == (State.HEALTHY, 1)  # a 429 is no error


def test_a_throttle_ends_at_its_deadline(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=7)
    clock.advance(7.0)

    health = tracker.status("p")

    assert health.rate_limited_until is None
    assert health.reasons == ["no calls in the window yet"]


def test_reasons_of_an_exhausted_quota(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota", retry_after_s=7)

    health = tracker.status("p")

    # A quota error is no burst: its Retry-After sets no throttle, the lockout is 600 s.
    assert health.reasons == ["quota exhausted (insufficient_quota): out until 22:23:20 or a successful probe"]
    assert health.state is State.UNAVAILABLE
    assert health.rate_limited_until == datetime.fromtimestamp(WALL_START + 600, UTC)

    clock.advance(599.0)
    assert tracker.status("p").state is State.UNAVAILABLE
    clock.advance(1.0)
    assert tracker.status("p").state is State.UNKNOWN


def test_a_quota_lockout_lasts_quota_cooldown_s(clock: FakeClock) -> None:
    tracker = make(clock, quota_cooldown_s=120.0)
    tracker.record("p", duration_s=0.1, status_code=429, error_code="billing_hard_limit_reached")

    health = tracker.status("p")

    assert health.reasons == ["quota exhausted (billing_hard_limit_reached): out until 22:15:20 or a successful probe"]
    assert health.rate_limited_until == datetime.fromtimestamp(WALL_START + 120, UTC)


def test_a_successful_call_ends_a_quota_lockout(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")

    tracker.record("p", duration_s=0.5)

    health = tracker.status("p")
    assert health.rate_limited_until is None
    assert health.state is State.HEALTHY


def test_a_failed_call_does_not_end_a_quota_lockout(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")

    tracker.record("p", duration_s=0.5, status_code=500)

    assert tracker.status("p").state is State.UNAVAILABLE


def test_a_later_quota_error_never_shortens_the_lockout(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")
    clock.advance(100.0)
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")

    assert tracker.status("p").rate_limited_until == datetime.fromtimestamp(WALL_START + 700, UTC)


def test_rate_limited_until_is_the_later_of_throttle_and_quota(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=200)
    tracker.record_probe("p", True)  # ends the quota lockout, not the throttle

    assert tracker.status("p").rate_limited_until == datetime.fromtimestamp(WALL_START + 200, UTC)


@pytest.mark.parametrize(("count", "reason"), [
    (1, "1 credential error (401/403): check the API key; not counted against health"),
    (2, "2 credential errors (401/403): check the API key; not counted against health"),
])
def test_credential_errors_are_counted_apart(tracker: HealthTracker, count: int, reason: str) -> None:
    for index in range(count):
        tracker.record("p", duration_s=0.1, status_code=(401, 403)[index % 2])

    health = tracker.status("p")

    assert health.credential_errors == count
    assert health.reasons == [reason, "no calls in the window yet"]
    assert (health.calls, health.state) == (0, State.UNKNOWN)


def test_missing_models_are_counted_apart(tracker: HealthTracker) -> None:
    for _ in range(3):
        tracker.record("p", duration_s=0.1, status_code=404)
    tracker.record("p", duration_s=0.1, status_code=401)

    health = tracker.status("p")

    assert health.not_found_errors == 3
    assert health.reasons == [
        "1 credential error (401/403): check the API key; not counted against health",
        "3 calls for a missing model (404); not counted against health",
        "no calls in the window yet",
    ]


def test_credential_and_404_counts_leave_the_window_after_window_s(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=401)
    tracker.record("p", duration_s=0.1, status_code=404)
    clock.advance(60.0)
    assert (tracker.status("p").credential_errors, tracker.status("p").not_found_errors) == (1, 1)

    clock.advance(0.5)

    assert (tracker.status("p").credential_errors, tracker.status("p").not_found_errors) == (0, 0)


def test_calls_and_probes_at_exactly_window_s_still_count(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.5)
    tracker.record_probe("p", True)
    clock.advance(60.0)
    assert (tracker.status("p").calls, tracker.status("p").probes) == (1, 1)

    clock.advance(0.5)

    assert (tracker.status("p").calls, tracker.status("p").probes) == (0, 0)


def test_window_s_is_configurable_and_named_in_the_reasons(clock: FakeClock) -> None:
    tracker = make(clock, window_s=30.0)
    tracker.record("p", duration_s=0.5, status_code=500)

    assert tracker.status("p").reasons == ["1 of 1 calls failed in the last 30 s", "Apdex 0.00 (T = 2 s)"]
    clock.advance(30.5)
    assert tracker.status("p").calls == 0


def test_the_apdex_reason_names_the_providers_own_threshold(clock: FakeClock) -> None:
    tracker = make(clock, apdex_thresholds={"p": 0.5})
    tracker.record("p", duration_s=1.0)  # tolerating at T = 0.5

    assert tracker.status("p").reasons == ["Apdex 0.50 (T = 0.5 s)"]
    assert tracker.status("p").latency_score == 0.5


def test_a_perfect_window_has_no_reasons(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)

    assert tracker.status("p").reasons == []


# --- load and permits -------------------------------------------------------------------------


def test_in_flight_counts_calls_begun_and_not_yet_recorded(tracker: HealthTracker) -> None:
    first = tracker.begin("p")
    tracker.begin("p")
    tracker.start("p")

    assert tracker.status("p").in_flight == 3

    tracker.record("p", duration_s=0.5, permit=first)

    assert tracker.status("p").in_flight == 2


def test_in_flight_never_goes_below_zero(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.5)

    assert tracker.status("p").in_flight == 0
    tracker.begin("p")
    assert tracker.status("p").in_flight == 1


def test_record_answers_the_calls_apdex_zone_or_none(tracker: HealthTracker) -> None:
    assert tracker.record("p", duration_s=0.5) == "satisfied"
    assert tracker.record("p", duration_s=5.0) == "tolerating"
    assert tracker.record("p", duration_s=9.0) == "frustrated"
    assert tracker.record("p", duration_s=0.1, status_code=500) == "frustrated"
    assert tracker.record("p", duration_s=0.1, status_code=429) is None
    assert tracker.record("p", duration_s=0.1, error="CancelledError") is None


def test_a_permit_recorded_twice_returns_none_the_second_time(tracker: HealthTracker) -> None:
    permit = tracker.allow("p")

    assert tracker.record("p", duration_s=0.5, permit=permit) == "satisfied"
    assert tracker.record("p", duration_s=0.5, permit=permit) is None
    assert tracker.status("p").calls == 1


def test_another_providers_permit_counts_as_no_permit(tracker: HealthTracker) -> None:
    foreign = tracker.allow("q")
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503, permit=foreign)

    assert tracker.status("p").calls == 5
    assert tracker.status("p").circuit == "open"
    assert tracker.snapshot()[0].provider == "p"  # and no state for q


def test_allow_on_a_provider_never_seen_grants_and_creates_nothing(tracker: HealthTracker) -> None:
    permit = tracker.allow("new")

    assert permit and not permit.trial
    assert (permit.provider, permit.period) == ("new", 0)
    assert tracker.snapshot() == []


def test_allow_and_begin_refuse_an_open_circuit_and_grant_one_trial_after_the_cooldown(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    fail(tracker, 5)
    assert not tracker.allow("p")
    assert not tracker.begin("p")

    clock.advance(5.0)
    trial = tracker.begin("p")

    assert trial and trial.trial
    assert not tracker.allow("p")


def test_a_later_hint_ending_at_the_same_time_leaves_the_reason_as_it_was(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=5)
    tracker.record("p", duration_s=0.1, status_code=429, headers={"x-ratelimit-reset-requests": "5s"})

    assert tracker.status("p").reasons[0] == "throttled until 22:13:25 by Retry-After"


def test_probes_that_leave_the_window_leave_the_availability(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record_probe("p", True)
    clock.advance(30.0)
    tracker.record_probe("p", False)
    clock.advance(31.0)  # the first probe is 61 s old, the second 31 s
    tracker.record("p", duration_s=0.5)

    health = tracker.status("p")

    assert (health.probes, health.calls) == (1, 1)
    assert health.availability == 0.5  # the call reached it, the probe left did not
