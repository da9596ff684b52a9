"""HealthTracker.choose and needs_watching: the failover order of SPEC section 5 and
docs/HEALTH.md ("choose"), on hand-made providers.

Rules, in order: open, throttled and quota-locked providers go last (the soonest back
first), a half-open provider with a trial free goes first (once one of its trials passed, a
probed provider ranked out waits for its retrial), then a provider ranked out whose
retrial is due, then by score where scores within ``tie_band`` of the best are equals, then
equals by load (peak-EWMA of latency times calls in flight plus one), then the caller's order.
"""

from __future__ import annotations

import pytest

from app.scoring import HealthConfig, HealthTracker
from tests.scoring.fake_clock import FakeClock


def make(clock: FakeClock, **config: object) -> HealthTracker:
    return HealthTracker(HealthConfig(**config), clock=clock, wall_clock=clock.wall)  # type: ignore[arg-type]


def test_choose_needs_a_candidate(tracker: HealthTracker) -> None:
    with pytest.raises(ValueError, match=r"^choose\(\) needs at least one candidate$"):
        tracker.choose([])


def test_unknown_providers_keep_the_callers_order_and_create_no_state(tracker: HealthTracker) -> None:
    choice = tracker.choose(iter(["x", "y", "x", "z"]))  # any iterable, duplicates once

    assert (choice.provider, choice.order, choice.panic) == ("x", ["x", "y", "z"], False)
    assert tracker.snapshot() == []


def test_a_score_lower_by_more_than_the_tie_band_goes_after(tracker: HealthTracker) -> None:
    for _ in range(8):
        tracker.record("a", duration_s=0.5)
    for _ in range(2):
        tracker.record("a", duration_s=0.5, status_code=500)  # score 0.4 + 0.24 + 0.24 = 0.88
    tracker.record("b", duration_s=0.5)  # score 1.0

    assert tracker.choose(["a", "b"]).order == ["b", "a"]


@pytest.mark.parametrize(("tie_band", "order"), [(0.15, ["a", "b"]), (0.05, ["b", "a"])])
def test_scores_within_the_tie_band_are_equals(clock: FakeClock, tie_band: float, order: list[str]) -> None:
    tracker = make(clock, tie_band=tie_band)
    for _ in range(8):
        tracker.record("a", duration_s=0.5)
    for _ in range(2):
        tracker.record("a", duration_s=0.5, status_code=500)  # 0.88, load 8 s (a failure costs 4T)
    tracker.record("b", duration_s=0.5)  # 1.0
    for _ in range(20):
        tracker.begin("b")  # load 0.5 s x 21 = 10.5

    # Within 0.15 of the best, a is an equal and the less loaded; outside 0.05 it ranks after.
    assert tracker.choose(["b", "a"]).order == order


def test_a_tie_band_of_zero_ranks_by_score_alone(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=0.0)
    for _ in range(9):
        tracker.record("a", duration_s=0.5)
    tracker.record("a", duration_s=5.0)  # one tolerating of 10: score 0.985
    tracker.record("b", duration_s=1.9)  # a slower but satisfied call: score 1.0

    assert tracker.choose(["a", "b"]).order == ["b", "a"]


def test_tiers_are_counted_from_the_best_score(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=0.05)
    tracker.record("best", duration_s=1.0)  # 1.0
    for _ in range(9):
        tracker.begin("best")  # load 1 s x 10 = 10
    for _ in range(9):
        tracker.record("near", duration_s=0.5)
    tracker.record("near", duration_s=5.0)  # 0.985, load 5: tier 0
    for _ in range(4):
        tracker.record("far", duration_s=0.5)
    tracker.record("far", duration_s=5.0)  # 0.97, load 5: still tier 0 (within 0.05 of 1.0)
    for _ in range(6):
        tracker.record("worse", duration_s=0.5)
    for _ in range(4):
        tracker.record("worse", duration_s=5.0)  # 0.94, load 5: tier 1

    assert tracker.choose(["worse", "best", "far", "near"]).order == ["far", "near", "best", "worse"]


def test_equals_go_by_the_peak_ewma_of_latency(tracker: HealthTracker) -> None:
    tracker.record("slow", duration_s=1.5)
    tracker.record("fast", duration_s=0.5)

    assert tracker.choose(["slow", "fast"]).order == ["fast", "slow"]


def test_equals_go_by_latency_times_calls_in_flight_plus_one(tracker: HealthTracker) -> None:
    tracker.record("busy", duration_s=0.5)
    tracker.record("idle", duration_s=1.5)
    for _ in range(3):
        tracker.begin("busy")  # 0.5 x 4 = 2.0 against 1.5 x 1

    assert tracker.choose(["busy", "idle"]).order == ["idle", "busy"]

    tracker.record("busy", duration_s=0.5)  # 0.5 x 3 = 1.5: a tie, the caller's order
    assert tracker.choose(["busy", "idle"]).order == ["busy", "idle"]


def test_a_streamed_call_feeds_the_load_its_time_to_first_token(tracker: HealthTracker) -> None:
    tracker.record("streamed", duration_s=30.0, ttft_s=0.2)
    tracker.record("plain", duration_s=0.5)

    assert tracker.choose(["plain", "streamed"]).order == ["streamed", "plain"]


@pytest.mark.parametrize(("slow_s", "first"), [(7.5, "slow"), (8.5, "failing")])
def test_a_fast_failure_costs_the_load_as_a_frustrated_call(clock: FakeClock, slow_s: float, first: str) -> None:
    tracker = make(clock, tie_band=1.0)  # every score an equal: the load alone decides
    tracker.record("failing", duration_s=0.05, status_code=500)  # costs 4T = 8 s, not 0.05 s
    tracker.record("slow", duration_s=slow_s)

    assert tracker.choose(["failing", "slow"]).provider == first


def test_a_failure_slower_than_4t_costs_its_own_duration(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=1.0)
    tracker.record("failing", duration_s=9.0, status_code=500)
    tracker.record("slow", duration_s=8.5)

    assert tracker.choose(["failing", "slow"]).order == ["slow", "failing"]


@pytest.mark.parametrize(("other_s", "first"), [(2.4, "other"), (2.6, "a")])
def test_the_ewma_jumps_to_a_slower_sample_and_decays_to_faster_ones(
    clock: FakeClock, other_s: float, first: str
) -> None:
    tracker = make(clock, tie_band=1.0)
    tracker.record("a", duration_s=6.0)
    clock.advance(10.0)  # one time constant: the old value weighs e^-1
    tracker.record("a", duration_s=0.5)  # 6 e^-1 + 0.5 (1 - e^-1) = 2.523
    tracker.record("other", duration_s=other_s)

    assert tracker.choose(["a", "other"]).provider == first


@pytest.mark.parametrize(("idle_s", "first"), [(6.0, "b"), (7.0, "a")])
def test_an_idle_providers_load_decays_towards_zero(clock: FakeClock, idle_s: float, first: str) -> None:
    tracker = make(clock, tie_band=1.0)
    tracker.record("a", duration_s=4.0)
    clock.advance(idle_s)  # 4 e^-0.6 = 2.195 > 2; 4 e^-0.7 = 1.986 < 2
    tracker.record("b", duration_s=2.0)

    assert tracker.choose(["a", "b"]).provider == first


def test_open_throttled_and_quota_locked_go_last_by_when_they_come_back(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    for _ in range(5):
        tracker.record("open", duration_s=0.1, status_code=503)  # back in 5 s
    tracker.record("throttled", duration_s=0.1, status_code=429, retry_after_s=3)  # back in 3 s
    tracker.record("quota", duration_s=0.1, status_code=429, error_code="insufficient_quota")  # 600 s
    tracker.record("ok", duration_s=0.5, status_code=500)  # poor but callable

    choice = tracker.choose(["quota", "open", "throttled", "ok"])

    assert choice.order == ["ok", "throttled", "open", "quota"]
    assert (choice.provider, choice.panic) == ("ok", False)


def test_when_every_candidate_is_out_the_soonest_back_comes_first_in_panic(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    tracker.record("later", duration_s=0.1, status_code=429, retry_after_s=30)
    tracker.record("sooner", duration_s=0.1, status_code=429, retry_after_s=10)

    choice = tracker.choose(["later", "sooner"])

    assert (choice.provider, choice.order, choice.panic) == ("sooner", ["sooner", "later"], True)


def test_out_until_the_same_time_the_better_score_comes_first(tracker: HealthTracker) -> None:
    tracker.record("poor", duration_s=0.5, status_code=500)
    tracker.record("good", duration_s=0.5)
    tracker.record("poor", duration_s=0.1, status_code=429, retry_after_s=10)
    tracker.record("good", duration_s=0.1, status_code=429, retry_after_s=10)

    assert tracker.choose(["poor", "good"]).order == ["good", "poor"]


def test_a_throttle_ends_exactly_at_its_deadline(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=3)
    clock.advance(2.9)
    assert tracker.choose(["p"]).panic

    clock.advance(0.1)

    assert not tracker.choose(["p"]).panic


def test_an_open_circuit_comes_back_at_the_end_of_its_cooldown(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    tracker.record("q", duration_s=0.5)
    clock.advance(4.9)
    assert tracker.choose(["p", "q"]).order == ["q", "p"]

    clock.advance(0.1)

    assert tracker.choose(["q", "p"]).order == ["p", "q"]  # half-open, its trial free: first


def test_a_half_open_provider_with_its_trial_out_waits_behind_the_others(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    tracker.record("q", duration_s=0.1, status_code=429, retry_after_s=30)
    clock.advance(5.0)
    tracker.allow("p")  # its one trial goes

    choice = tracker.choose(["q", "p"])

    # Both out; the half-open one can take a call as soon as its trial is back, the throttled one in 25 s.
    assert (choice.order, choice.panic) == (["p", "q"], True)


def test_a_provider_ranked_out_is_retried_once_max_cooldown_s_passed_without_calls(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    for _ in range(4):
        tracker.record("sick", duration_s=0.1, error="timeout")  # closed, score 0
    tracker.record("well", duration_s=0.5)
    clock.advance(9.9)
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    clock.advance(0.1)  # 10 s since its last call

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]
    tracker.allow("sick")  # the retrial goes: the next is due 10 s later
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]


def one_trial_passed(tracker: HealthTracker, clock: FakeClock, probed: bool) -> None:
    """``p`` tripped by five 503s beside ``well``, half-open (by a passed probe, or at the
    end of its cooldown), and its first trial passed: its score still ranks it out."""
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    tracker.record("well", duration_s=0.5)
    clock.advance(1.0 if probed else 5.0)
    if probed:
        tracker.record_probe("p", True)
    permit = tracker.allow("p")
    assert permit
    tracker.record("p", duration_s=0.5, permit=permit)
    assert tracker.status("p").circuit == "half_open"


def test_after_a_passed_trial_a_probed_provider_ranked_out_waits_for_its_retrial(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    one_trial_passed(tracker, clock, probed=True)
    clock.advance(1.0)
    tracker.record_probe("p", True)
    tracker.record_probe("p", True)  # two passes since its trial: due once open_cooldown_s passed
    assert tracker.choose(["well", "p"]).order == ["well", "p"]

    clock.advance(4.0)  # 5 s since its trial

    assert tracker.choose(["well", "p"]).order == ["p", "well"]


def test_after_a_passed_trial_an_unprobed_provider_sends_its_next_trial_first(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    one_trial_passed(tracker, clock, probed=False)  # its trials are all that can show it back

    assert tracker.choose(["well", "p"]).order == ["p", "well"]


def test_after_a_passed_trial_a_probed_provider_among_the_best_goes_first(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=1.0)  # every score an equal
    one_trial_passed(tracker, clock, probed=True)

    assert tracker.choose(["well", "p"]).order == ["p", "well"]


def test_a_half_open_provider_goes_before_a_retrial(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(4):
        tracker.record("sick", duration_s=0.1, error="timeout")
    for _ in range(5):
        tracker.record("trial", duration_s=0.1, status_code=503)
    tracker.record("well", duration_s=0.5)
    clock.advance(10.0)

    assert tracker.choose(["well", "sick", "trial"]).order == ["trial", "sick", "well"]


def sick_ranked_out(tracker: HealthTracker, clock: FakeClock, for_s: float) -> None:
    """``sick`` ranked out by four timeouts (its circuit still closed) beside ``well``, and
    ``for_s`` seconds since its last call."""
    for _ in range(4):
        tracker.record("sick", duration_s=0.1, error="timeout")
    tracker.record("well", duration_s=0.5)
    clock.advance(for_s)


def test_with_probes_a_retrial_is_due_after_two_passed_probes_sent_since_the_last_call(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    sick_ranked_out(tracker, clock, 5.0)
    tracker.record_probe("sick", True)
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]  # one probe is not two

    tracker.record_probe("sick", True)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_a_provider_known_only_from_its_probes_gets_its_retrial_after_two_passes(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    tracker.record("well", duration_s=0.5)
    for _ in range(4):  # never called: ranked out by its failed probes alone
        tracker.record_probe("sick", False)
        clock.advance(1.0)
    tracker.record_probe("sick", True)
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    tracker.record_probe("sick", True)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_with_probes_a_retrial_waits_at_least_open_cooldown_s(tracker: HealthTracker, clock: FakeClock) -> None:
    sick_ranked_out(tracker, clock, 1.0)
    tracker.record_probe("sick", True)
    tracker.record_probe("sick", True)
    clock.advance(3.9)  # 4.9 s since its last call
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    clock.advance(0.1)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_with_probes_a_failed_probe_breaks_the_run(tracker: HealthTracker, clock: FakeClock) -> None:
    sick_ranked_out(tracker, clock, 5.0)
    tracker.record_probe("sick", True)
    tracker.record_probe("sick", False)
    tracker.record_probe("sick", True)
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    tracker.record_probe("sick", True)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_with_probes_a_failure_reported_late_breaks_only_the_passes_sent_before_it(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    # A probe that times out reports 5 s after its send, behind the probes sent after it.
    sick_ranked_out(tracker, clock, 6.0)
    tracker.record_probe("sick", True, sent_at=clock.now - 2.0)
    tracker.record_probe("sick", True, sent_at=clock.now - 1.0)
    tracker.record_probe("sick", False, sent_at=clock.now - 5.0)  # sent before both: the run stands
    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]

    tracker.record_probe("sick", False, sent_at=clock.now - 1.5)  # sent between them

    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]


def test_with_probes_only_probes_sent_since_the_last_call_count(tracker: HealthTracker, clock: FakeClock) -> None:
    sick_ranked_out(tracker, clock, 5.0)
    tracker.record_probe("sick", True, sent_at=clock.now - 6.0)  # sent before its last call
    tracker.record_probe("sick", True)
    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    tracker.record_probe("sick", True)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_a_provider_probed_recently_waits_for_its_probes_not_the_timer(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    sick_ranked_out(tracker, clock, 9.0)
    tracker.record_probe("sick", False)
    clock.advance(1.0)  # 10 s without a call, but a probe ended 1 s ago and failed

    assert tracker.choose(["well", "sick"]).order == ["well", "sick"]

    clock.advance(9.0)  # the last probe ended 10 s ago: the timer rules again
    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]


def test_a_retrial_among_the_best_needs_no_special_place(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=0.2)
    for _ in range(8):
        tracker.record("a", duration_s=0.5)
    for _ in range(2):
        tracker.record("a", duration_s=0.5, status_code=500)  # 0.88: among the best with a band of 0.2
    clock.advance(20.0)  # its retrial is due; its load decayed to 8 e^-2 = 1.08
    tracker.record("b", duration_s=0.4)  # 1.0, load 0.4, just called

    assert tracker.choose(["a", "b"]).order == ["b", "a"]  # by load, no retrial jump


def test_a_retrial_due_one_tier_below_the_best_goes_first(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=0.05)
    for _ in range(6):
        tracker.record("a", duration_s=0.5)
    for _ in range(4):
        tracker.record("a", duration_s=5.0)  # 0.94: one tier below the best
    clock.advance(9.0)
    tracker.record("b", duration_s=0.5)  # 1.0
    assert tracker.choose(["b", "a"]).order == ["b", "a"]

    clock.advance(1.0)  # 10 s since a's last call

    assert tracker.choose(["b", "a"]).order == ["a", "b"]


# --- needs_watching ------------------------------------------------------------------------------


def test_needs_watching_a_provider_out_or_ranked_out(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("well", duration_s=0.5)
    for _ in range(4):
        tracker.record("sick", duration_s=0.1, error="timeout")  # closed, unavailable
    for _ in range(5):
        tracker.record("open", duration_s=0.1, status_code=503)
    for _ in range(5):
        tracker.record("slow", duration_s=5.0)  # tolerating: score 0.85, healthy
    for _ in range(2):
        tracker.record("degraded", duration_s=0.5, error="timeout")
    for _ in range(3):
        tracker.record("degraded", duration_s=0.5)  # 0.4 * 0.6 + 0.3 * 0.6 + 0.3 * 0.6 = 0.6

    watched = {name: tracker.needs_watching(name) for name in ("well", "sick", "open", "slow", "degraded", "new")}

    assert watched == {"well": False, "sick": True, "open": True, "slow": False, "degraded": True, "new": False}
    assert tracker.snapshot()[-1].provider != "new"  # asking creates no state


def test_needs_watching_a_half_open_provider(clock: FakeClock) -> None:
    tracker = make(clock, weights=(1.0, 0.0, 0.0))
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=500)  # reached: availability stays 1
    clock.advance(5.0)

    assert tracker.status("p").circuit == "half_open"
    assert tracker.needs_watching("p")


def test_a_provider_without_a_latency_sample_costs_nothing(clock: FakeClock) -> None:
    tracker = make(clock, tie_band=1.0)
    tracker.record("known", duration_s=0.5)
    tracker.record_probe("probed", True)  # known by a probe only: no latency yet

    assert tracker.choose(["known", "probed", "new"]).order == ["probed", "new", "known"]


def test_choose_scores_each_provider_with_its_own_apdex_threshold(clock: FakeClock) -> None:
    tracker = make(clock, apdex_thresholds={"batch": 10.0})
    tracker.record("batch", duration_s=8.0)  # satisfied at its own T = 10 s: score 1.0, load 8
    tracker.record("chat", duration_s=0.5)
    for _ in range(20):
        tracker.begin("chat")  # load 0.5 x 21 = 10.5

    assert tracker.choose(["chat", "batch"]).order == ["batch", "chat"]
    assert not tracker.needs_watching("batch")  # healthy by its own threshold


def test_a_probe_sent_at_the_moment_of_the_last_call_counts_towards_the_retrial(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    for _ in range(4):
        tracker.record("sick", duration_s=0.1, error="timeout")  # the last call ends at 1000
    tracker.record("well", duration_s=0.5)
    clock.advance(5.0)
    tracker.record_probe("sick", True, sent_at=1000.0)
    tracker.record_probe("sick", True)

    assert tracker.choose(["well", "sick"]).order == ["sick", "well"]
