"""HealthTracker's surface for its listeners and for the other processes: transition hooks,
the outcomes it keeps for sharing (share_outcomes / take_outcomes), replaying the others'
outcomes (apply), and the exported and snapshot views (docs/HEALTH.md, SPEC section 5,
"Shared verdicts").
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

import app.scoring.tracker as tracker_module
from app.scoring import HealthConfig, HealthTracker, State
from app.scoring.events import CALL, GRANTED, PROBE, SharedOutcome
from tests.scoring.fake_clock import WALL_START, FakeClock

Move = tuple[str, str, str, str]


def make(clock: FakeClock, **config: object) -> HealthTracker:
    return HealthTracker(HealthConfig(**config), clock=clock, wall_clock=clock.wall)  # type: ignore[arg-type]


def trip(tracker: HealthTracker, provider: str = "p") -> None:
    for _ in range(5):
        tracker.record(provider, duration_s=0.1, status_code=503)


# --- listeners -------------------------------------------------------------------------------------


def test_a_listener_hears_every_move_in_order(tracker: HealthTracker, clock: FakeClock) -> None:
    heard: list[Move] = []
    tracker.add_listener(lambda *move: heard.append(move))
    trip(tracker)
    clock.advance(5.0)

    tracker.record("p", duration_s=0.1, status_code=500)  # moves it to half-open, then fails its trial

    assert heard == [
        ("p", "closed", "open", "5 consecutive failures (last: unreached 503)"),
        ("p", "open", "half_open", "cooldown of 5 s over"),
        ("p", "half_open", "open", "a trial call failed (failure 500)"),
    ]


def test_a_listener_hears_the_moves_of_allow_and_begin(tracker: HealthTracker, clock: FakeClock) -> None:
    heard: list[Move] = []
    tracker.add_listener(lambda *move: heard.append(move))
    trip(tracker)
    trip(tracker, "q")
    clock.advance(5.0)

    tracker.allow("p")
    tracker.begin("q")

    assert heard[2:] == [("p", "open", "half_open", "cooldown of 5 s over"),
                         ("q", "open", "half_open", "cooldown of 5 s over")]


def test_a_listener_hears_a_close_and_a_probes_move(tracker: HealthTracker, clock: FakeClock) -> None:
    heard: list[Move] = []
    trip(tracker)
    tracker.add_listener(lambda *move: heard.append(move))

    tracker.record_probe("p", True)
    for _ in range(3):
        tracker.record("p", duration_s=0.5, permit=tracker.allow("p"))

    assert heard == [("p", "open", "half_open", "a probe succeeded"),
                     ("p", "half_open", "closed", "3 trial calls passed")]


def test_a_listener_added_twice_is_called_once(tracker: HealthTracker) -> None:
    heard: list[Move] = []

    def hook(*move: str) -> None:
        heard.append(move)  # type: ignore[arg-type]

    tracker.add_listener(hook)
    tracker.add_listener(hook)
    trip(tracker)

    assert len(heard) == 1


def test_a_removed_listener_is_not_called_and_removing_an_unknown_one_is_harmless(
    tracker: HealthTracker,
) -> None:
    kept: list[Move] = []
    removed: list[Move] = []

    def keep(*move: str) -> None:
        kept.append(move)  # type: ignore[arg-type]

    def remove(*move: str) -> None:
        removed.append(move)  # type: ignore[arg-type]

    tracker.add_listener(keep)
    tracker.add_listener(remove)
    tracker.remove_listener(remove)
    tracker.remove_listener(lambda *move: None)
    trip(tracker)

    assert (len(kept), removed) == (1, [])


def test_a_listener_that_raises_is_skipped_and_routing_goes_on(tracker: HealthTracker) -> None:
    heard: list[Move] = []

    def broken(*move: str) -> None:
        raise RuntimeError("a broken metrics hook")

    tracker.add_listener(broken)
    tracker.add_listener(lambda *move: heard.append(move))

    trip(tracker)

    assert len(heard) == 1
    assert tracker.status("p").circuit == "open"


def test_a_listener_may_read_the_tracker(tracker: HealthTracker) -> None:
    seen: list[str] = []
    tracker.add_listener(lambda provider, *_: seen.append(tracker.status(provider).circuit))

    trip(tracker)

    assert seen == ["open"]


# --- outcomes kept for the other processes -------------------------------------------------------


def test_nothing_is_kept_until_sharing_is_on(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)

    assert tracker.take_outcomes() == []


def test_each_outcome_is_kept_once_with_what_the_others_need(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.share_outcomes()
    permit = tracker.allow("p")
    clock.advance(1.0)
    tracker.record("p", duration_s=1.5, ttft_s=0.25, status_code=500, permit=permit)
    tracker.record("p", duration_s=0.5, headers={"x": "y"})
    tracker.record("p", duration_s=0.1, status_code=429, retry_after_s=7, ttft_s=0.05)
    tracker.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")
    tracker.record_probe("p", True, sent_at=1000.5)
    tracker.record_probe("p", False)

    taken = tracker.take_outcomes()

    now = 1001.0
    assert taken == [
        SharedOutcome(CALL, "p", "failure", now, 1000.0, False, 1.5, 0.25, "failure 500"),
        SharedOutcome(CALL, "p", "success", now, now, False, 0.5, 0.5, ""),
        SharedOutcome(CALL, "p", "throttled", now, now, False, 0.1, 0.1, "", now + 7, "Retry-After"),
        SharedOutcome(CALL, "p", "quota", now, now, False, 0.1, 0.1, "", now + 7, "Retry-After", now + 600,
                      "quota exhausted (insufficient_quota)"),
        SharedOutcome(PROBE, "p", "success", now, 1000.5),
        SharedOutcome(PROBE, "p", "unreached", now, now),
    ]
    assert tracker.take_outcomes() == []


def test_a_trial_calls_outcome_is_marked_as_a_trial(tracker: HealthTracker, clock: FakeClock) -> None:
    trip(tracker)
    clock.advance(5.0)
    tracker.share_outcomes()
    trial = tracker.allow("p")

    tracker.record("p", duration_s=0.5, permit=trial)

    (outcome,) = [item for item in tracker.take_outcomes() if item.outcome == "success"]
    assert (outcome.trial, outcome.issued) == (True, 1005.0)


def test_a_trial_voided_when_its_period_ended_is_no_trial_for_the_others(clock: FakeClock) -> None:
    tracker = make(clock, trials_at_once=2)
    trip(tracker)
    clock.advance(5.0)
    tracker.share_outcomes()
    failing, late = tracker.allow("p"), tracker.allow("p")
    tracker.record("p", duration_s=0.1, status_code=500, permit=failing)  # reopens

    tracker.record("p", duration_s=0.5, permit=late)

    verdicts = [item for item in tracker.take_outcomes() if item.outcome in ("success", "failure")]
    assert [(item.outcome, item.trial) for item in verdicts] == [("failure", True), ("success", False)]


def test_switching_sharing_on_twice_keeps_what_was_kept(tracker: HealthTracker) -> None:
    tracker.share_outcomes()
    tracker.record("p", duration_s=0.5)
    tracker.share_outcomes()

    assert len(tracker.take_outcomes()) == 1


def test_switching_sharing_off_drops_and_stops_keeping(tracker: HealthTracker) -> None:
    tracker.share_outcomes()
    tracker.record("p", duration_s=0.5)
    tracker.share_outcomes(False)
    tracker.record("p", duration_s=0.5)
    tracker.record_probe("p", True)

    assert tracker.take_outcomes() == []


def test_at_most_max_unshared_outcomes_wait(tracker: HealthTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "MAX_UNSHARED", 3)
    tracker.share_outcomes()
    for _ in range(3):
        tracker.record("p", duration_s=0.5)
    tracker.record("p", duration_s=0.5)
    tracker.record_probe("p", True)

    assert len(tracker.take_outcomes()) == 3


def test_max_unshared_bounds_the_memory_to_about_a_hundred_thousand_outcomes() -> None:
    assert tracker_module.MAX_UNSHARED == 100_000


# --- replaying the others' outcomes ----------------------------------------------------------------


def relay(source: HealthTracker, target: HealthTracker) -> None:
    target.apply(source.take_outcomes())


def test_another_processs_failures_trip_this_circuit(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    there.share_outcomes()
    trip(there)

    relay(there, here)

    health = here.status("p")
    assert (health.circuit, health.calls, health.error_rate) == ("open", 5, 1.0)
    assert not here.allow("p")
    assert health.reasons[0] == ("circuit open since 22:13:20 after 5 consecutive failures (last: unreached 503); "
                                 "next trial call at 22:13:25 (cooldown 5 s)")


def test_remote_moves_reach_only_the_listeners_that_want_them(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    every: list[Move] = []
    own: list[Move] = []
    here.add_listener(lambda *move: every.append(move))
    here.add_listener(lambda *move: own.append(move), remote=False)
    there.share_outcomes()
    trip(there)

    relay(there, here)

    assert every == [("p", "closed", "open", "5 consecutive failures (last: unreached 503)")]
    assert own == []
    trip(here, "q")
    assert own == [("q", "closed", "open", "5 consecutive failures (last: unreached 503)")]


def test_another_processs_throttle_keeps_this_one_off_until_its_deadline(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    there.share_outcomes()
    there.record("p", duration_s=0.1, status_code=429, retry_after_s=30)
    here.record("p", duration_s=0.1, status_code=429, retry_after_s=60)  # a longer one here already

    relay(there, here)

    health = here.status("p")
    assert health.rate_limited_until == datetime.fromtimestamp(WALL_START + 60, UTC)  # never shortened
    assert health.reasons == ["throttled until 22:14:20 by Retry-After", "no calls in the window yet"]

    there.record("p", duration_s=0.1, status_code=429, headers={"retry-after-ms": "90000"})
    relay(there, here)

    assert here.status("p").reasons[0] == "throttled until 22:14:50 by retry-after-ms"


def test_another_processs_quota_error_locks_this_one_out(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    there.share_outcomes()
    there.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")

    relay(there, here)

    health = here.status("p")
    assert health.state is State.UNAVAILABLE
    assert health.reasons == ["quota exhausted (insufficient_quota): out until 22:23:20 or a successful probe"]
    assert here.choose(["p"]).panic


def test_a_later_shorter_quota_never_shortens_this_ones(clock: FakeClock) -> None:
    here, there = make(clock), make(clock, quota_cooldown_s=60.0)
    here.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")
    there.share_outcomes()
    there.record("p", duration_s=0.1, status_code=429, error_code="quota_exceeded")

    relay(there, here)

    assert here.status("p").reasons == ["quota exhausted (insufficient_quota): out until 22:23:20 or a successful "
                                        "probe"]


def test_another_processs_credential_and_404_answers_are_counted_apart(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    there.share_outcomes()
    there.record("p", duration_s=0.1, status_code=401)
    there.record("p", duration_s=0.1, status_code=404)
    there.record("p", duration_s=0.1, status_code=404)

    relay(there, here)

    health = here.status("p")
    assert (health.credential_errors, health.not_found_errors, health.calls) == (1, 2, 0)


def test_another_processs_probes_count_in_availability(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    there.share_outcomes()
    there.record_probe("p", True)
    there.record_probe("p", False)

    relay(there, here)

    assert (here.status("p").probes, here.status("p").availability) == (2, 0.5)


def test_another_processs_probe_success_moves_an_open_circuit_to_half_open(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    trip(here)
    there.share_outcomes()
    there.record_probe("p", True)

    relay(there, here)

    assert here.status("p").circuit == "half_open"


def test_an_outcome_this_version_does_not_know_is_no_verdict(tracker: HealthTracker) -> None:
    tracker.apply([SharedOutcome(CALL, "p", "exploded", 1000.0, 1000.0, duration_s=1.0)])

    health = tracker.status("p")
    assert (health.calls, health.score, health.circuit) == (0, 1.0, "closed")


def test_outcomes_applied_are_not_passed_on_again(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    here.share_outcomes()
    there.share_outcomes()
    there.record("p", duration_s=0.5)

    relay(there, here)

    assert here.take_outcomes() == []


def test_a_call_admitted_before_this_circuits_latest_move_says_nothing_of_it(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)
    clock.advance(5.0)
    here.allow("p")  # half-open here since 1005
    old_failure = SharedOutcome(CALL, "p", "failure", 1005.0, 1001.0, duration_s=0.1, latency_s=0.1, what="x")

    here.apply([old_failure])

    assert here.status("p").circuit == "half_open"


def test_a_remote_trial_failure_while_half_open_reopens_the_circuit(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)
    clock.advance(5.0)
    trial_failure = SharedOutcome(CALL, "p", "failure", 1006.0, 1005.0, True, 0.1, 0.1, "failure 500")
    clock.advance(1.0)

    here.apply([trial_failure])

    health = here.status("p")
    assert health.circuit == "open"
    # The next trial is due a doubled cooldown (10 s) after that trial was sent (1005).
    assert health.reasons[0] == ("circuit open since 22:13:26 after a trial call failed (failure 500); "
                                 "next trial call at 22:13:35 (cooldown 10 s)")


def test_a_remote_call_counts_as_a_call_that_went_for_the_retrial_timer(clock: FakeClock) -> None:
    here, there = make(clock), make(clock)
    for _ in range(4):
        here.record("sick", duration_s=0.1, error="timeout")
    here.record("well", duration_s=0.5)
    clock.advance(9.0)
    there.share_outcomes()
    there.record("sick", duration_s=0.1, error="timeout")  # another process retried it now
    relay(there, here)
    clock.advance(1.0)

    assert here.choose(["well", "sick"]).order == ["well", "sick"]  # its retrial was 1 s ago, not 10


# --- exported and snapshot ---------------------------------------------------------------------


def test_exported_holds_the_first_providers_recorded_by_name_and_counts_the_rest(tracker: HealthTracker) -> None:
    for name in ("c", "a", "d", "b"):
        tracker.record(name, duration_s=0.5)

    kept, more = tracker.exported(2)

    assert [health.provider for health in kept] == ["a", "c"]
    assert more == 2
    everything, none = tracker.exported(10)
    assert [health.provider for health in everything] == ["a", "b", "c", "d"]
    assert none == 0


def test_exported_prunes_what_left_the_window(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("p", duration_s=0.5, status_code=500)
    clock.advance(61.0)

    (health,), more = tracker.exported(1)

    assert (health.calls, health.state, more) == (0, State.UNKNOWN, 0)


def test_snapshot_is_every_provider_by_name_pruned_to_the_window(tracker: HealthTracker, clock: FakeClock) -> None:
    tracker.record("b", duration_s=0.5, status_code=500)
    clock.advance(30.0)
    tracker.record("a", duration_s=0.5)
    clock.advance(31.0)

    snapshot = tracker.snapshot()

    assert [(health.provider, health.calls) for health in snapshot] == [("a", 1), ("b", 0)]


def test_a_shared_outcome_without_deadlines_means_none() -> None:
    item = SharedOutcome(CALL, "p", "success", 1.0, 1.0)

    assert item.throttled_until == -math.inf and item.quota_until == -math.inf


def test_a_remote_probe_overtakes_only_the_trials_sent_before_it(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)
    clock.advance(5.0)
    trial = here.allow("p")  # sent at 1005
    clock.advance(1.0)
    probe_sent_before = SharedOutcome(PROBE, "p", "success", 1006.0, 1004.0)

    here.apply([probe_sent_before])

    assert not trial.void
    assert not here.allow("p")  # the trial out still holds the door

    here.apply([SharedOutcome(PROBE, "p", "success", 1006.0, 1005.5)])

    assert trial.void


# --- the trial gate ------------------------------------------------------------------------------


class RecordingGate:
    """A trial gate that grants while ``open`` and records what it was asked."""

    def __init__(self) -> None:
        self.open = True
        self.calls: list[tuple[object, ...]] = []

    def acquire(self, provider: str, issued: float, deadline: float, limit: int) -> bool:
        self.calls.append(("acquire", provider, issued, deadline, limit))
        return self.open

    def release(self, provider: str, issued: float) -> None:
        self.calls.append(("release", provider, issued))


def test_a_trial_permit_needs_a_place_at_the_gate(tracker: HealthTracker, clock: FakeClock) -> None:
    gate = RecordingGate()
    tracker.trial_gate = gate
    trip(tracker)
    clock.advance(5.0)
    gate.open = False

    refused = tracker.allow("p")

    assert not refused
    assert (refused.provider, refused.period, refused.issued, refused.trial) == ("p", 2, 1005.0, False)
    assert ("acquire", "p", 1005.0, 1305.0, 1) in gate.calls
    gate.open = True
    clock.advance(1.0)
    granted = tracker.allow("p")  # the refused one took no trial here: this one may go
    assert granted.trial and granted.issued == 1006.0


def test_a_trial_overtaken_by_a_probe_gives_its_place_at_the_gate_back(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    gate = RecordingGate()
    tracker.trial_gate = gate
    trip(tracker)
    clock.advance(5.0)
    trial = tracker.allow("p")
    clock.advance(1.0)
    gate.calls.clear()

    tracker.record_probe("p", True, sent_at=1005.5)

    assert trial.void
    assert ("release", "p", 1005.0) in gate.calls


# --- replaying: the period a remote call counts in -----------------------------------------------


def remote(outcome: str, at: float, issued: float | None = None, trial: bool = False, duration_s: float = 0.1,
           **changes: object) -> SharedOutcome:
    return SharedOutcome(CALL, "p", outcome, at, at if issued is None else issued, trial, duration_s, duration_s,
                         "failure 500" if outcome == "failure" else "")._replace(**changes)


def closed_again(tracker: HealthTracker, clock: FakeClock) -> None:
    """Tripped at 1000, closed by three trials at 1005; no probation (probation_s=0)."""
    trip(tracker)
    clock.advance(5.0)
    for _ in range(3):
        tracker.record("p", duration_s=0.5, permit=tracker.allow("p"))
    assert tracker.status("p").circuit == "closed"


def test_remote_calls_admitted_before_the_circuit_closed_never_reopen_it(clock: FakeClock) -> None:
    here = make(clock, probation_s=0.0)
    closed_again(here, clock)
    clock.advance(1.0)

    here.apply([remote("failure", 1006.0, issued=1004.9) for _ in range(5)])

    assert here.status("p").circuit == "closed"


def test_remote_calls_admitted_as_the_circuit_closed_count(clock: FakeClock) -> None:
    here = make(clock, probation_s=0.0)
    closed_again(here, clock)
    clock.advance(1.0)

    here.apply([remote("failure", 1006.0, issued=1005.0) for _ in range(5)])

    assert here.status("p").circuit == "open"


def test_a_remote_trip_is_judged_when_its_process_recorded_it(clock: FakeClock) -> None:
    here = make(clock)
    clock.advance(4.0)  # the outcomes arrive a second after they were recorded at 1003

    here.apply([remote("failure", 1003.0, issued=1000.0) for _ in range(5)])

    assert here.status("p").reasons[0] == ("circuit open since 22:13:23 after 5 consecutive failures (last: failure "
                                           "500); next trial call at 22:13:28 (cooldown 5 s)")


def test_a_remote_outcome_from_the_future_is_judged_now(clock: FakeClock) -> None:
    here = make(clock)

    here.apply([remote("failure", 1003.0) for _ in range(5)])  # another clock a little ahead

    assert here.status("p").reasons[0].startswith("circuit open since 22:13:20 ")


def test_remote_trial_verdicts_do_not_count_for_a_closed_circuit(clock: FakeClock) -> None:
    here = make(clock)

    here.apply([remote("failure", 1000.0, trial=True) for _ in range(5)])

    health = here.status("p")
    assert (health.circuit, health.calls) == ("closed", 5)  # scored, but no verdict for the breaker


def test_remote_trial_verdicts_count_while_half_open_since_before_they_were_sent(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)
    clock.advance(5.0)  # half-open from 1005 for every process
    early = remote("success", 1005.0, issued=1004.0, trial=True, duration_s=0.5)  # sent before: no trial
    here.apply([early])
    assert here.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 0 of 3 passed"

    here.apply([remote("success", 1005.0, issued=1005.0, trial=True, duration_s=0.5)])
    assert here.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"

    here.apply([remote("success", 1005.0, trial=True, duration_s=0.5) for _ in range(2)])
    assert here.status("p").circuit == "closed"


def test_a_remote_trial_failure_while_this_circuit_is_still_open_delays_its_trial(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)  # next trial at 1005 here
    clock.advance(3.0)

    # Another process went half-open at 1002 (a probe) and its trial, sent then, failed at 1003.
    here.apply([remote("failure", 1003.0, issued=1002.0, trial=True)])

    assert here.status("p").reasons[0].endswith("next trial call at 22:13:27 (cooldown 5 s)")  # 1002 + 5


def test_a_remote_trial_failure_sent_long_before_leaves_the_cooldown_as_it_is(clock: FakeClock) -> None:
    here = make(clock)
    trip(here)
    clock.advance(3.0)

    here.apply([remote("failure", 1003.0, issued=999.0, trial=True)])  # 999 + 5 = 1004 < 1005

    assert here.status("p").reasons[0].endswith("next trial call at 22:13:25 (cooldown 5 s)")


@pytest.mark.parametrize("item", [remote("success", 1003.0, issued=1002.0, trial=True),
                                  remote("failure", 1003.0, issued=1002.0)])
def test_only_a_remote_trials_failure_delays_an_open_circuits_trial(clock: FakeClock, item: SharedOutcome) -> None:
    here = make(clock)
    trip(here)
    clock.advance(3.0)

    here.apply([item])

    assert here.status("p").reasons[0].endswith("next trial call at 22:13:25 (cooldown 5 s)")


def test_a_remote_call_is_scored_with_the_providers_own_apdex_threshold(clock: FakeClock) -> None:
    here = make(clock, apdex_thresholds={"p": 10.0})

    here.apply([remote("success", 1000.0, duration_s=8.0)])

    assert here.status("p").latency_score == 1.0


def test_a_remote_deadline_equal_to_this_ones_leaves_its_reason(clock: FakeClock) -> None:
    here = make(clock)
    here.record("p", duration_s=0.1, status_code=429, retry_after_s=30)
    here.record("p", duration_s=0.1, status_code=429, error_code="insufficient_quota")

    here.apply([remote("throttled", 1000.0, throttled_until=1030.0, throttle_source="retry-after-ms"),
                remote("quota", 1000.0, quota_until=1600.0, quota_reason="quota exhausted (billing_not_active)")])

    assert here.status("p").reasons == [
        "quota exhausted (insufficient_quota): out until 22:23:20 or a successful probe",
        "throttled until 22:13:50 by Retry-After",
    ]


def test_a_failed_trial_keeps_its_place_at_the_gate_until_the_next_trial_is_due(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    gate = RecordingGate()
    tracker.trial_gate = gate
    trip(tracker)
    clock.advance(5.0)
    trial = tracker.allow("p")
    clock.advance(1.0)
    gate.calls.clear()

    tracker.record("p", duration_s=1.0, status_code=500, permit=trial)

    # Its own place back, then one held to 1005 + 10 s: no other process sends a trial before then.
    assert gate.calls == [("release", "p", 1005.0), ("acquire", "p", 1006.0, 1015.0, 1)]


def test_a_passed_trial_gives_its_place_at_the_gate_back(tracker: HealthTracker, clock: FakeClock) -> None:
    gate = RecordingGate()
    tracker.trial_gate = gate
    trip(tracker)
    clock.advance(5.0)
    trial = tracker.allow("p")
    gate.calls.clear()

    tracker.record("p", duration_s=0.5, permit=trial)

    assert gate.calls == [("release", "p", 1005.0)]


# --- calls announced as they go -------------------------------------------------------------------


def test_a_trial_is_announced_to_the_other_processes_as_it_is_granted(tracker: HealthTracker,
                                                                      clock: FakeClock) -> None:
    trip(tracker)
    clock.advance(5.0)
    tracker.share_outcomes()

    assert tracker.allow("p").trial

    assert tracker.take_outcomes() == [SharedOutcome(CALL, "p", GRANTED, 1005.0, 1005.0, True)]


@pytest.mark.parametrize(("pause_s", "announced"), [(4.9, False), (5.0, True)])
def test_a_call_after_a_pause_of_open_cooldown_s_is_announced(
    tracker: HealthTracker, clock: FakeClock, pause_s: float, announced: bool
) -> None:
    tracker.record("p", duration_s=0.5)  # the provider's last call, at 1000
    tracker.share_outcomes()
    clock.advance(pause_s)

    assert tracker.allow("p")

    expected = [SharedOutcome(CALL, "p", GRANTED, 1000.0 + pause_s, 1000.0 + pause_s, False)]
    assert tracker.take_outcomes() == (expected if announced else [])


def test_an_announcement_waits_no_more_than_max_unshared_outcomes_either(
    tracker: HealthTracker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracker_module, "MAX_UNSHARED", 1)
    trip(tracker)
    tracker.share_outcomes()
    tracker.record_probe("p", False)  # the one outcome that may wait
    clock.advance(5.0)

    assert tracker.allow("p").trial

    assert [item.kind for item in tracker.take_outcomes()] == [PROBE]
