"""Incidents replayed on a fake clock: storms, timeouts, throttles, quota, slowness, recovery."""

from __future__ import annotations

import threading

import pytest

from app.scoring import HealthConfig, HealthTracker, State
from tests.scoring.fake_clock import WALL_START, FakeClock  # noqa: F401

Move = tuple[str, str, str, str]


@pytest.fixture
def moves() -> list[Move]:
    return []


@pytest.fixture
def tracker(clock: FakeClock, moves: list[Move]) -> HealthTracker:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    tracker.add_listener(lambda *move: moves.append(move))
    return tracker


def fail(tracker: HealthTracker, provider: str, times: int = 1, status_code: int = 500) -> None:
    for _ in range(times):
        tracker.record(provider, duration_s=0.2, status_code=status_code)


def succeed(tracker: HealthTracker, provider: str, times: int = 1, duration_s: float = 0.5) -> None:
    for _ in range(times):
        tracker.record(provider, duration_s=duration_s)


def open_circuit(tracker: HealthTracker, provider: str) -> None:
    fail(tracker, provider, 5)
    assert tracker.status(provider).circuit == "open"


def trial_fails(tracker: HealthTracker, clock: FakeClock, provider: str, after_s: float) -> None:
    """Wait out a cooldown, take a trial permit and fail it."""
    clock.advance(after_s)
    assert tracker.allow(provider)
    fail(tracker, provider)


def wait_for_trial(tracker: HealthTracker, provider: str, clock: FakeClock) -> float:
    """Step the fake clock a second at a time until a trial permit is granted; the wait."""
    start = clock.now
    while not tracker.allow(provider):
        clock.advance(1.0)
    return clock.now - start


# --- 5xx storm and the breaker's cooldowns -------------------------------------------------


def test_5xx_storm_opens_the_circuit_on_the_5th_consecutive_failure(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 20)
    fail(tracker, "a", 4)
    assert tracker.status("a").circuit == "closed"
    assert tracker.allow("a")

    fail(tracker, "a")

    health = tracker.status("a")
    assert health.circuit == "open"
    assert health.state is State.UNAVAILABLE
    assert health.availability == 0.0
    assert not tracker.allow("a")
    assert health.reasons[0] == ("circuit open since 22:13:20 after 5 consecutive failures (last: failure 500); "
                                 "next trial call at 22:13:25 (cooldown 5 s)")


def test_consecutive_count_restarts_after_a_success(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 20)
    for _ in range(3):
        fail(tracker, "a", 4)
        succeed(tracker, "a")

    assert tracker.status("a").circuit == "closed"


def test_open_circuit_half_opens_after_5s(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")

    clock.advance(4.9)
    assert not tracker.allow("a")
    assert tracker.status("a").circuit == "open"

    clock.advance(0.1)
    assert tracker.status("a").circuit == "half_open"
    assert tracker.status("a").reasons[0] == "circuit half-open: 0 trial calls in flight, 0 of 3 passed"
    assert tracker.allow("a")
    assert tracker.status("a").reasons[0] == "circuit half-open: 1 trial call in flight, 0 of 3 passed"


def test_failed_trial_reopens_with_a_10s_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")

    trial_fails(tracker, clock, "a", after_s=5.0)

    health = tracker.status("a")
    assert health.circuit == "open"
    assert "after a trial call failed (failure 500); next trial call at 22:13:35 (cooldown 10 s)" in health.reasons[0]
    clock.advance(9.9)
    assert not tracker.allow("a")
    clock.advance(0.1)
    assert tracker.allow("a")


def test_cooldown_doubles_on_each_failed_trial_up_to_10s(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")
    cooldowns = []
    for _ in range(4):
        cooldowns.append(wait_for_trial(tracker, "a", clock))
        fail(tracker, "a")  # the trial call fails

    assert cooldowns == [5.0, 10.0, 10.0, 10.0]


def test_a_week_of_outage_never_wedges_the_breaker(clock: FakeClock) -> None:
    # Doubling as a power overflowed after 1,024 trips (about 86 hours): record() raised,
    # the circuit never reopened and choose() ranked the dead provider first.
    config = HealthConfig(open_cooldown_s=1.0, max_cooldown_s=300.0)
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    fail(tracker, "dead", 5)
    succeed(tracker, "alive", 10)
    week, trials = 7 * 86_400.0, 0
    end = clock.now + week
    while clock.now < end:
        clock.advance(config.max_cooldown_s)
        permit = tracker.allow("dead")
        assert permit, "a trial call is let through after every cooldown"
        tracker.record("dead", duration_s=0.2, status_code=503, permit=permit)
        trials += 1

    assert trials == week // config.max_cooldown_s
    assert tracker.status("dead").circuit == "open"
    assert tracker.choose(["dead", "alive"]).order == ["alive", "dead"]
    clock.advance(config.max_cooldown_s)
    for _ in range(config.half_open_trials):  # it comes back: three trials in a row close it
        permit = tracker.allow("dead")
        tracker.record("dead", duration_s=0.2, permit=permit)
    assert tracker.status("dead").circuit == "closed"


def test_failure_rate_of_half_the_calls_over_10_opens_the_circuit(tracker: HealthTracker) -> None:
    for _ in range(4):
        fail(tracker, "a")
        succeed(tracker, "a")
    fail(tracker, "a")
    assert tracker.status("a").circuit == "closed"  # 5 of 9: under min_calls

    succeed(tracker, "a")

    health = tracker.status("a")
    assert health.circuit == "open"
    assert "after 5 of the last 10 calls failed" in health.reasons[0]


def test_failure_rate_below_the_threshold_keeps_the_circuit_closed(tracker: HealthTracker) -> None:
    for _ in range(10):
        succeed(tracker, "a", 3)
        fail(tracker, "a", 2)  # never 50% of the calls so far

    health = tracker.status("a")
    assert health.circuit == "closed"
    assert health.error_rate == pytest.approx(0.4)
    assert health.state is State.DEGRADED


# --- timeouts -------------------------------------------------------------------------------


def test_timeouts_lower_availability_and_5xx_do_not(tracker: HealthTracker) -> None:
    succeed(tracker, "timeouts", 8)
    for _ in range(2):
        tracker.record("timeouts", duration_s=30.0, error="timeout")
    succeed(tracker, "fives", 8)
    fail(tracker, "fives", 2)

    timeouts, fives = tracker.status("timeouts"), tracker.status("fives")

    assert (timeouts.availability, timeouts.error_rate) == (pytest.approx(0.8), pytest.approx(0.2))
    assert (fives.availability, fives.error_rate) == (1.0, pytest.approx(0.2))
    assert timeouts.score < fives.score
    assert "2 of 10 calls failed in the last 60 s" in timeouts.reasons


def test_timeout_storm_opens_the_circuit_and_says_so(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("a", duration_s=30.0, error="timeout")

    health = tracker.status("a")
    assert health.circuit == "open"
    assert "5 consecutive failures (last: timeout)" in health.reasons[0]


# --- rate limits and quota -----------------------------------------------------------------


def test_429_with_retry_after_keeps_the_provider_out_of_choose_until_it_ends(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    succeed(tracker, "a", 10)
    succeed(tracker, "b", 10, duration_s=1.5)
    assert tracker.choose(["a", "b"]).provider == "a"

    tracker.record("a", duration_s=0.05, status_code=429, headers={"Retry-After": "20"})

    health = tracker.status("a")
    assert "throttled until 22:13:40 by Retry-After" in health.reasons
    assert health.score == 1.0  # a 429 is not an error
    assert health.calls == 10
    for _ in range(19):
        clock.advance(1.0)
        choice = tracker.choose(["a", "b"])
        assert (choice.provider, choice.order, choice.panic) == ("b", ["b", "a"], False)

    clock.advance(1.0)
    assert tracker.choose(["a", "b"]).provider == "a"
    assert tracker.status("a").rate_limited_until is None
    assert not any(reason.startswith("throttled") for reason in tracker.status("a").reasons)


def test_quota_exhausted_keeps_the_provider_out_for_600s(tracker: HealthTracker, clock: FakeClock) -> None:
    succeed(tracker, "a", 10)
    succeed(tracker, "b", 10, duration_s=1.5)

    tracker.record("a", duration_s=0.05, status_code=429, error_code="insufficient_quota", retry_after_s=1)

    health = tracker.status("a")
    assert health.state is State.UNAVAILABLE
    assert ("quota exhausted (insufficient_quota): out until 22:23:20 or a successful probe"
            in health.reasons)
    clock.advance(599.0)
    assert tracker.choose(["a", "b"]).provider == "b"
    clock.advance(1.0)
    assert tracker.choose(["a", "b"]).provider == "a"


def test_quota_lockout_ends_with_a_successful_probe(tracker: HealthTracker, clock: FakeClock) -> None:
    succeed(tracker, "b", 10, duration_s=1.5)
    tracker.record("a", duration_s=0.05, status_code=429, error_code="billing_hard_limit_reached")
    clock.advance(5.0)
    tracker.record_probe("a", ok=False)  # a failed probe does not end it
    assert tracker.choose(["a"]).panic

    tracker.record_probe("a", ok=True)

    assert not tracker.choose(["a"]).panic
    assert not any("quota" in reason for reason in tracker.status("a").reasons)


def test_quota_exhausted_provider_is_unavailable_even_before_any_scored_call(tracker: HealthTracker) -> None:
    # "No data: 1.0, unknown" exists so that a new provider gets traffic; one whose quota
    # is used up must not, and its status must not say it has merely not been tried.
    tracker.record("a", duration_s=0.05, status_code=429, error_code="insufficient_quota")

    health = tracker.status("a")

    assert health.state is State.UNAVAILABLE
    assert "no calls in the window yet" not in health.reasons


# --- slowness --------------------------------------------------------------------------------


def test_slow_provider_is_degraded_not_open(tracker: HealthTracker) -> None:
    for _ in range(10):
        tracker.record("slow", duration_s=12.0)
    succeed(tracker, "fast", 10)

    health = tracker.status("slow")

    assert health.state is State.DEGRADED
    assert health.circuit == "closed"
    assert tracker.allow("slow")
    assert health.slow_call_rate == 1.0
    assert "slow: 100% of calls over 10 s" in health.reasons
    assert "Apdex 0.00 (T = 2 s)" in health.reasons
    choice = tracker.choose(["slow", "fast"])
    assert (choice.order, choice.panic) == (["fast", "slow"], False)


def test_slow_streamed_first_tokens_count_as_slow(tracker: HealthTracker) -> None:
    for _ in range(10):
        tracker.record("slow", duration_s=40.0, ttft_s=11.0)

    assert tracker.status("slow").state is State.DEGRADED


# --- recovery ---------------------------------------------------------------------------------


def test_recovery_through_half_open_back_to_closed(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")
    succeed(tracker, "b", 10, duration_s=1.5)
    assert tracker.choose(["a", "b"]).provider == "b"

    clock.advance(5.0)
    choice = tracker.choose(["a", "b"])
    assert (choice.provider, choice.panic) == ("a", False)  # a trial call goes first
    for passed in range(3):
        permit = tracker.allow("a")
        assert permit
        tracker.record("a", duration_s=0.5, permit=permit)
        if passed < 2:
            assert tracker.status("a").circuit == "half_open"

    health = tracker.status("a")
    assert health.circuit == "closed"
    assert tracker.allow("a")
    assert health.reasons[0] == ("circuit closed at 22:13:25, on probation until 22:14:25: "
                                 "a failure sends it back to half-open")
    clock.advance(tracker.config.probation_s)
    assert not any(reason.startswith("circuit") for reason in tracker.status("a").reasons)


def test_half_open_lets_one_trial_call_through_at_a_time(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")
    clock.advance(5.0)

    granted = [bool(tracker.allow("a")) for _ in range(3)]

    assert granted == [True, False, False]
    assert tracker.choose(["a", "b"]).provider == "b"


def close_after_a_failed_trial(tracker: HealthTracker, clock: FakeClock, provider: str) -> None:
    """Open, fail one trial (next cooldown 10 s), then pass three trials: closed."""
    open_circuit(tracker, provider)
    trial_fails(tracker, clock, provider, after_s=5.0)
    clock.advance(10.0)
    for _ in range(3):
        assert tracker.allow(provider)
        succeed(tracker, provider)
    assert tracker.status(provider).circuit == "closed"


def test_a_failure_on_probation_sends_the_circuit_back_to_half_open(
    tracker: HealthTracker, clock: FakeClock, moves: list[Move]
) -> None:
    close_after_a_failed_trial(tracker, clock, "a")
    clock.advance(tracker.config.probation_s - 1.0)

    fail(tracker, "a")

    assert tracker.status("a").circuit == "half_open"
    assert moves[-1] == ("a", "closed", "half_open", "a failure on probation (failure 500)")
    assert tracker.allow("a").trial  # one trial decides at once


def test_noise_on_probation_costs_three_trials(tracker: HealthTracker, clock: FakeClock) -> None:
    close_after_a_failed_trial(tracker, clock, "a")
    fail(tracker, "a")
    for _ in range(3):
        assert tracker.allow("a")
        succeed(tracker, "a")
    assert tracker.status("a").circuit == "closed"


def test_a_relapse_on_probation_keeps_the_backoff(tracker: HealthTracker, clock: FakeClock) -> None:
    close_after_a_failed_trial(tracker, clock, "a")
    clock.advance(tracker.config.probation_s - 1.0)
    fail(tracker, "a")

    trial_fails(tracker, clock, "a", after_s=0.0)

    assert tracker.status("a").circuit == "open"
    assert wait_for_trial(tracker, "a", clock) == 10.0  # doubling goes on from 10 s, capped


def test_after_its_probation_a_provider_trips_as_a_fresh_one(tracker: HealthTracker, clock: FakeClock) -> None:
    close_after_a_failed_trial(tracker, clock, "a")
    clock.advance(tracker.config.probation_s)

    fail(tracker, "a", 4)
    assert tracker.status("a").circuit == "closed"
    fail(tracker, "a")

    assert wait_for_trial(tracker, "a", clock) == 5.0


def test_a_success_of_a_call_sent_before_a_failed_one_does_not_end_the_run(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    # Long calls admitted while the provider was fine end after newer calls have failed.
    long_calls = [tracker.allow("a") for _ in range(5)]
    clock.advance(1.0)
    for permit in long_calls[:4]:
        tracker.record("a", duration_s=0.2, status_code=503, permit=tracker.allow("a"))
        tracker.record("a", duration_s=20.0, permit=permit)  # an older call ends well
    assert tracker.status("a").circuit == "closed"

    tracker.record("a", duration_s=0.2, status_code=503, permit=tracker.allow("a"))

    assert tracker.status("a").circuit == "open"


def test_a_success_of_a_call_sent_after_the_failures_ends_the_run(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(4):
        tracker.record("a", duration_s=0.2, status_code=503, permit=tracker.allow("a"))
    tracker.record("a", duration_s=0.5, permit=tracker.allow("a"))
    tracker.record("a", duration_s=0.2, status_code=503, permit=tracker.allow("a"))

    assert tracker.status("a").circuit == "closed"


def test_the_next_trial_is_due_a_cooldown_after_the_failed_one_was_sent(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    open_circuit(tracker, "a")
    clock.advance(5.0)
    trial = tracker.allow("a")
    assert trial.trial
    clock.advance(10.0)  # the trial times out after 10 s: its whole cooldown has passed
    tracker.record("a", duration_s=10.0, error="timeout", permit=trial)

    assert tracker.status("a").circuit == "half_open"
    assert tracker.allow("a").trial


def test_a_successful_probe_overtakes_a_trial_call_still_out(tracker: HealthTracker, clock: FakeClock) -> None:
    open_circuit(tracker, "a")
    clock.advance(5.0)
    slow_trial = tracker.allow("a")  # sent while the provider was still down
    assert not tracker.allow("a")
    clock.advance(2.0)
    sent = clock.now
    clock.advance(0.5)

    tracker.record_probe("a", ok=True, sent_at=sent)

    assert tracker.allow("a").trial  # the door is free again
    clock.advance(7.5)
    tracker.record("a", duration_s=10.0, error="timeout", permit=slow_trial)
    assert tracker.status("a").circuit == "half_open"  # its late failure reopens nothing


@pytest.mark.parametrize(("status_code", "error_code"), [(429, None), (401, None), (404, None)],
                         ids=["429", "401", "404"])
def test_trial_answered_429_401_or_404_does_not_leave_the_circuit_stuck_half_open(
    tracker: HealthTracker, clock: FakeClock, status_code: int, error_code: str | None
) -> None:
    # Such an answer is no verdict on the provider's health, but it must not keep its trial
    # permit: with every permit gone the provider would stay half-open, and out, for good.
    open_circuit(tracker, "a")
    clock.advance(5.0)
    for _ in range(3):
        permit = tracker.allow("a")
        assert permit
        tracker.record("a", duration_s=0.05, status_code=status_code, error_code=error_code, retry_after_s=1,
                       permit=permit)

    clock.advance(2.0)

    assert tracker.allow("a")
    succeed(tracker, "a")
    for _ in range(2):
        assert tracker.allow("a")
        succeed(tracker, "a")
    assert tracker.status("a").circuit == "closed"


def test_a_late_answer_from_an_earlier_half_open_period_frees_no_trial_permit(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    config = HealthConfig(trials_at_once=3)
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    open_circuit(tracker, "a")
    clock.advance(5.0)
    old = [tracker.allow("a") for _ in range(3)]
    assert all(old)
    tracker.record("a", duration_s=0.2, status_code=500, permit=old[0])  # a trial fails: open for 10 s
    clock.advance(10.0)
    new = [tracker.allow("a") for _ in range(4)]
    assert [bool(permit) for permit in new] == [True, True, True, False]

    tracker.record("a", duration_s=70.0, status_code=429, retry_after_s=1, permit=old[1])  # an old trial ends
    tracker.record("a", duration_s=70.0, permit=old[2])  # another, a success: no trial of this period

    assert not tracker.allow("a")  # the three trials of this period are still running
    assert tracker.status("a").reasons[0] == "circuit half-open: 3 trial calls in flight, 0 of 3 passed"


# --- failover and panic -------------------------------------------------------------------------


def test_panic_when_every_candidate_is_excluded_returns_the_one_back_soonest(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    open_circuit(tracker, "a")
    clock.advance(2.0)
    open_circuit(tracker, "b")
    tracker.record("c", duration_s=0.05, status_code=429, retry_after_s=120)

    choice = tracker.choose(["b", "c", "a"])

    assert choice.panic is True
    assert choice.provider == "a"  # its cooldown ends first (3 s left)
    assert choice.order == ["a", "b", "c"]


def test_the_last_provider_is_never_excluded_for_good(tracker: HealthTracker) -> None:
    open_circuit(tracker, "only")

    choice = tracker.choose(["only"])

    assert (choice.provider, choice.order, choice.panic) == ("only", ["only"], True)


def test_choose_prefers_the_better_score(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 8)
    fail(tracker, "a", 2)
    succeed(tracker, "b", 10)

    assert tracker.choose(["a", "b"]).order == ["b", "a"]


def test_choose_breaks_ties_on_load(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 10)
    succeed(tracker, "b", 10)
    for _ in range(3):
        tracker.start("a")

    assert tracker.choose(["a", "b"]).provider == "b"


def test_scores_within_the_tie_band_are_equals_and_load_decides(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 10)
    tracker.record("a", duration_s=3.0)  # one tolerating call: 0.986, within 0.05 of 1.0
    succeed(tracker, "b", 11)  # 1.0
    for _ in range(5):
        tracker.start("b")  # but five calls in flight

    assert tracker.status("a").score > 1.0 - tracker.config.tie_band
    assert tracker.choose(["a", "b"]).provider == "a"


def test_choose_needs_a_candidate(tracker: HealthTracker) -> None:
    with pytest.raises(ValueError):
        tracker.choose([])


# --- what is not the provider's health --------------------------------------------------------


def test_credential_errors_and_missing_models_do_not_lower_the_score(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 10)
    for status_code in (401, 403, 404, 401, 401, 404, 403):
        tracker.record("a", duration_s=0.1, status_code=status_code)

    health = tracker.status("a")

    assert (health.score, health.calls, health.state, health.circuit) == (1.0, 10, State.HEALTHY, "closed")
    assert (health.credential_errors, health.not_found_errors) == (5, 2)
    assert "5 credential errors (401/403): check the API key; not counted against health" in health.reasons
    assert "2 calls for a missing model (404); not counted against health" in health.reasons


# --- transition listeners ----------------------------------------------------------------------


def test_a_listener_receives_every_move(tracker: HealthTracker, clock: FakeClock, moves: list[Move]) -> None:
    open_circuit(tracker, "a")
    trial_fails(tracker, clock, "a", after_s=5.0)
    clock.advance(10.0)
    for _ in range(3):
        assert tracker.allow("a")
        succeed(tracker, "a")

    assert [(provider, before, after) for provider, before, after, _ in moves] == [
        ("a", "closed", "open"),
        ("a", "open", "half_open"),
        ("a", "half_open", "open"),
        ("a", "open", "half_open"),
        ("a", "half_open", "closed"),
    ]
    assert moves[0][3] == "5 consecutive failures (last: failure 500)"
    assert moves[-1][3] == "3 trial calls passed"


def test_a_listener_sees_the_half_open_move_of_a_call_ending_after_the_cooldown(
    tracker: HealthTracker, clock: FakeClock, moves: list[Move]
) -> None:
    open_circuit(tracker, "a")
    clock.advance(5.0)

    fail(tracker, "a")  # a call without a permit ends now: taken as a trial call

    assert [(before, after) for _, before, after, _ in moves] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_a_failing_listener_breaks_neither_recording_nor_the_listeners_after_it(
    clock: FakeClock, moves: list[Move]
) -> None:
    def hook(*_: str) -> None:
        raise RuntimeError("metrics are down")

    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    tracker.add_listener(hook)
    tracker.add_listener(lambda *move: moves.append(move))

    fail(tracker, "a", 5)

    assert tracker.status("a").circuit == "open"
    assert [(before, after) for _, before, after, _ in moves] == [("closed", "open")]


def test_a_listener_hears_only_its_own_tracker(clock: FakeClock) -> None:
    mine, other = HealthTracker(clock=clock, wall_clock=clock.wall), HealthTracker(clock=clock, wall_clock=clock.wall)
    heard: list[Move] = []
    mine.add_listener(lambda *move: heard.append(move))

    open_circuit(other, "a")
    assert heard == []
    open_circuit(mine, "a")
    assert [(provider, after) for provider, _, after, _ in heard] == [("a", "open")]


def test_a_listener_added_twice_is_called_once(tracker: HealthTracker) -> None:
    heard: list[str] = []

    def hook(provider: str, before: str, after: str, reason: str) -> None:
        heard.append(after)

    tracker.add_listener(hook)
    tracker.add_listener(hook)
    open_circuit(tracker, "a")

    assert heard == ["open"]


def test_a_removed_listener_is_called_no_more(tracker: HealthTracker, clock: FakeClock) -> None:
    heard: list[str] = []

    def hook(provider: str, before: str, after: str, reason: str) -> None:
        heard.append(after)

    tracker.add_listener(hook)
    open_circuit(tracker, "a")
    tracker.remove_listener(hook)
    tracker.remove_listener(hook)  # gone already: nothing to do
    clock.advance(5.0)
    assert tracker.allow("a")  # open -> half-open

    assert heard == ["open"]


def test_a_listener_runs_outside_the_lock_so_it_may_read_the_tracker(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    seen: list[str] = []

    def hook(provider: str, *_: str) -> None:
        # Read from another thread, with a timeout: a hook called under the lock fails
        # this test instead of hanging it.
        reader = threading.Thread(target=lambda: seen.append(tracker.status(provider).circuit), daemon=True)
        reader.start()
        reader.join(timeout=5)

    tracker.add_listener(hook)

    open_circuit(tracker, "a")
    clock.advance(5.0)
    assert tracker.allow("a")

    assert seen == ["open", "half_open"]


def test_custom_breaker_settings_are_honoured(clock: FakeClock) -> None:
    config = HealthConfig(consecutive_failures=2, open_cooldown_s=5.0, max_cooldown_s=5.0, half_open_trials=1)
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)

    fail(tracker, "a", 2)
    assert tracker.status("a").circuit == "open"
    clock.advance(5.0)
    assert [bool(tracker.allow("a")) for _ in range(2)] == [True, False]
    succeed(tracker, "a")

    assert tracker.status("a").circuit == "closed"


def test_a_successful_probe_moves_an_open_circuit_to_half_open(
    tracker: HealthTracker, clock: FakeClock, moves: list[Move]
) -> None:
    open_circuit(tracker, "a")
    clock.advance(2.0)  # inside the 5 s cooldown
    assert not tracker.allow("a")
    tracker.record_probe("a", ok=True)
    assert tracker.status("a").circuit == "half_open"
    assert tracker.allow("a")
    assert moves[-1][1:3] == ("open", "half_open") and moves[-1][3] == "a probe succeeded"


def test_a_trial_permit_never_returned_is_freed_after_the_trial_timeout(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    open_circuit(tracker, "a")
    clock.advance(5.0)
    lost = tracker.allow("a")  # a trial call that never reports back
    assert lost
    assert not tracker.allow("a")
    clock.advance(tracker.config.trial_timeout_s)
    fresh = tracker.allow("a")
    assert fresh

    tracker.record("a", duration_s=0.2, status_code=500, permit=lost)  # its late answer is no trial

    assert tracker.status("a").circuit == "half_open"
    tracker.record("a", duration_s=0.2, permit=fresh)
    assert tracker.status("a").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_a_provider_ranked_out_by_its_score_is_retried_once_per_max_cooldown(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    # Without calls its score could never recover: it would stay last until its window empties.
    succeed(tracker, "a", 6)
    fail(tracker, "a", 4)
    succeed(tracker, "b", 10)
    assert tracker.choose(["a", "b"]).provider == "b"

    clock.advance(tracker.config.max_cooldown_s)
    assert tracker.choose(["a", "b"]).provider == "a"
    assert tracker.allow("a")

    assert tracker.choose(["a", "b"]).provider == "b"  # one call, then back to its rank


def rank_a_out(tracker: HealthTracker) -> None:
    succeed(tracker, "a", 6)
    fail(tracker, "a", 4)
    succeed(tracker, "b", 10)
    assert tracker.choose(["a", "b"]).provider == "b"


def test_a_probed_provider_ranked_out_is_retried_after_two_probes_in_a_row_pass(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    rank_a_out(tracker)
    assert tracker.needs_watching("a") and not tracker.needs_watching("b")
    clock.advance(tracker.config.open_cooldown_s)
    tracker.record_probe("a", ok=True, sent_at=clock.now - 0.5)
    assert tracker.choose(["a", "b"]).provider == "b"  # one probe is not enough

    clock.advance(1.0)
    tracker.record_probe("a", ok=True, sent_at=clock.now - 0.5)

    assert tracker.choose(["a", "b"]).provider == "a"
    tracker.start("a")
    assert tracker.choose(["a", "b"]).provider == "b"  # one call, then the probes start over


def test_a_probed_provider_whose_probes_fail_is_not_retried_by_the_timer(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    rank_a_out(tracker)
    for _ in range(int(tracker.config.max_cooldown_s) + 5):
        clock.advance(1.0)
        tracker.record_probe("a", ok=False)
        assert tracker.choose(["a", "b"]).provider == "b"
    tracker.record_probe("a", ok=True)
    tracker.record_probe("a", ok=True)
    assert tracker.choose(["a", "b"]).provider == "a"
