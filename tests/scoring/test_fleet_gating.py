"""The fleet's trial gating, rule by rule: announced trials, turns and retrial claims.

Another process's trial is announced (``GRANTED``) as it is sent and holds this process's
trials until its verdict comes, at most ``min(trial_timeout_s, max_cooldown_s)``; hosts
take turns when a trial (cycle: the breaker's trips) or a retrial (cycle -1) is due; a
retrial of a provider ranked out is claimed on the trial gate (docs/HEALTH.md, "One
breaker per fleet"). Each test builds its own trackers on a fake clock and feeds them the
other processes' outcomes through ``apply``, as the sharing does.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from app.scoring import Circuit, HealthConfig, HealthTracker, Permit
from app.scoring.events import CALL, GRANTED, VOIDED, SharedOutcome, decode, encode
from app.scoring.probes import ProbeRunner
from app.scoring.sharing import TURN_ROUNDS, Sharing, turn_place
from app.scoring.tracker import MAX_REMOTE_TRIALS, RETRIAL_CLAIM_S, SAME_SEND_S
from tests.scoring.fake_clock import FakeClock
from tests.scoring.test_fleet_turns import CONFIG, PROVIDER

P = PROVIDER


def tracker_on(clock: FakeClock, config: HealthConfig = CONFIG) -> HealthTracker:
    return HealthTracker(config, clock=clock, wall_clock=clock.wall)


def trip(tracker: HealthTracker, provider: str = P) -> None:
    """The provider fails until its circuit opens."""
    for _ in range(tracker.config.consecutive_failures):
        tracker.record(provider, duration_s=0.1, status_code=503, permit=tracker.allow(provider))
    assert tracker.status(provider).circuit is Circuit.OPEN


def half_open(tracker: HealthTracker, clock: FakeClock) -> float:
    """Trip the circuit and wait out its cooldown: it reads half-open, no trial out yet."""
    trip(tracker)
    clock.advance(tracker.config.open_cooldown_s)
    assert tracker.status(P).circuit is Circuit.HALF_OPEN
    return clock.now


def granted(issued: float, trial: bool = True, provider: str = P) -> SharedOutcome:
    """Another process's announcement: a trial (or a call after a pause) sent at ``issued``."""
    return SharedOutcome(CALL, provider, GRANTED, issued, issued, trial)


def verdict(issued: float, outcome: str = "success", at: float | None = None) -> SharedOutcome:
    """Another process's verdict of its trial sent at ``issued``."""
    return SharedOutcome(CALL, P, outcome, issued if at is None else at, issued, True, 0.1, 0.1,
                         "failure 500" if outcome == "failure" else "")


def in_flight(tracker: HealthTracker) -> int:
    """The trial calls in flight the half-open reason counts (this process's and announced)."""
    reasons = " ".join(tracker.status(P).reasons)
    match = re.search(r"(\d+) trial calls? in flight", reasons)
    assert match, reasons
    return int(match.group(1))


class Turns:
    """A tracker's ``turn`` that records what it is asked and waits ``wait_s``."""

    def __init__(self, wait_s: float = 0.0) -> None:
        self.wait_s = wait_s
        self.calls: list[tuple[str, int]] = []

    def __call__(self, provider: str, cycle: int) -> float:
        self.calls.append((provider, cycle))
        return self.wait_s


class Gate:
    """A trial gate that answers every retrial claim with ``answer`` and keeps the claims."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.claims: list[tuple[str, float, float, int]] = []

    def acquire(self, provider: str, issued: float, deadline: float, limit: int) -> bool:
        self.claims.append((provider, issued, deadline, limit))
        return self.answer

    def release(self, provider: str, issued: float) -> None:
        pass


# --- how long an announced trial holds ----------------------------------------------------


@pytest.mark.parametrize(("trial_timeout_s", "max_cooldown_s"), [(3.0, 10.0), (300.0, 10.0), (8.0, 8.0)])
def test_an_announced_trial_holds_the_others_for_the_shorter_of_trial_timeout_and_max_cooldown(
        clock: FakeClock, trial_timeout_s: float, max_cooldown_s: float) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=max_cooldown_s, trial_timeout_s=trial_timeout_s,
                          half_open_trials=3, trials_at_once=1)
    tracker = tracker_on(clock, config)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent)])
    hold = min(trial_timeout_s, max_cooldown_s)
    clock.advance(hold - 0.01)
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)
    assert tracker.choose([P, "other"]).order[0] == "other"  # left out while held
    clock.now = sent + hold  # the hold is over: the announcement no longer counts
    assert in_flight(tracker) == 0
    permit = tracker.allow(P)
    assert permit and permit.trial


def test_an_announced_trial_for_one_provider_holds_no_other(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent, provider="other")])
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def test_a_denied_permit_carries_the_provider_the_period_and_the_time(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent)])
    clock.advance(0.5)
    denied = tracker.allow(P)  # held by the announced trial
    breaker = tracker._providers[P].breaker
    assert not denied and not denied.trial
    assert (denied.provider, denied.period, denied.issued) == (P, breaker.period, clock.now)
    # A turn not come yet denies the same way.
    other = tracker_on(clock)
    half_open(other, clock)
    other.turn = Turns(wait_s=1.0)
    clock.advance(0.25)
    denied = other.allow(P)
    breaker = other._providers[P].breaker
    assert not denied
    assert (denied.provider, denied.period, denied.issued) == (P, breaker.period, clock.now)
    # Recording a call with it counts nothing for the breaker.
    other.record(P, duration_s=0.1, status_code=500, permit=denied)
    assert other.status(P).circuit is Circuit.HALF_OPEN


def test_trials_out_here_and_announced_ones_share_trials_at_once(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, half_open_trials=3, trials_at_once=2)
    tracker = tracker_on(clock, config)
    half_open(tracker, clock)
    own = tracker.allow(P)
    assert own.trial
    clock.advance(0.1)
    tracker.apply([granted(clock.now)])
    assert in_flight(tracker) == 2
    assert not tracker.allow(P)  # one here, one announced: both places taken
    assert tracker.choose([P, "other"]).order[0] == "other"
    tracker.record(P, duration_s=0.1, status_code=200, permit=own)
    assert tracker.allow(P).trial  # its place came back


# --- what ends an announcement --------------------------------------------------------------


def test_a_verdict_settles_the_announced_trial_sent_closest_to_it_and_no_other(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=3600.0, trial_timeout_s=3600.0)
    tracker = tracker_on(clock, config)
    half_open(tracker, clock)
    # Two trials announced by processes whose clocks put them long before this half-open
    # period: their verdicts count for nothing here, but still settle their announcements.
    tracker.apply([granted(1.0), granted(2.0)])
    assert in_flight(tracker) == 2
    tracker.apply([verdict(2.0 + 0.03)])  # the later one's, its send time moved by a clock offset
    assert in_flight(tracker) == 1
    clock.now = 1.0 + 3600.0  # the earlier one's hold is over: nothing is held any more
    assert in_flight(tracker) == 0


def test_a_verdict_settles_the_earlier_of_two_announced_trials_too(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=3600.0, trial_timeout_s=3600.0)
    tracker = tracker_on(clock, config)
    half_open(tracker, clock)
    tracker.apply([granted(1.0), granted(2.0)])
    tracker.apply([verdict(1.0 - 0.03, outcome="failure")])
    assert in_flight(tracker) == 1
    clock.now = 1.0 + 3600.0
    assert in_flight(tracker) == 1  # the later one still holds
    clock.now = 2.0 + 3600.0
    assert in_flight(tracker) == 0


def test_a_verdict_within_same_send_s_settles_and_one_further_away_does_not(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=3600.0, trial_timeout_s=3600.0)
    tracker = tracker_on(clock, config)
    half_open(tracker, clock)
    assert 0.05 - 0.0 == SAME_SEND_S and 0.1 - 0.05 == SAME_SEND_S  # exact in binary floating point
    tracker.apply([granted(0.0), granted(1.0)])
    tracker.apply([verdict(0.1)])  # 0.1 from the nearest: another trial's
    assert in_flight(tracker) == 2
    tracker.apply([verdict(0.05)])  # exactly SAME_SEND_S from it: the same send
    assert in_flight(tracker) == 1
    clock.now = 1.0 + 3600.0
    assert in_flight(tracker) == 0  # the one left was sent at 1.0


def test_a_move_to_half_open_keeps_the_announced_trials(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    late = tracker.allow(P)  # a call admitted before the trip, answered after it
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent)])
    assert tracker._providers[P].breaker.state is Circuit.OPEN  # half-open as read, not yet moved
    clock.advance(0.5)
    tracker.record(P, duration_s=0.1, status_code=200, permit=late)  # moves it to half-open
    assert tracker._providers[P].breaker.state is Circuit.HALF_OPEN
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)
    tracker.record(P, duration_s=0.1, status_code=200, permit=late)  # no move at all
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)


def test_a_failed_trial_that_reopens_the_circuit_clears_the_announced_trials(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent), granted(sent + 1.0)])
    clock.advance(1.5)
    tracker.apply([verdict(sent, outcome="failure", at=clock.now)])  # the first one failed
    breaker = tracker._providers[P].breaker
    assert breaker.state is Circuit.OPEN
    assert breaker.next_trial_at == pytest.approx(sent + 10.0)  # a doubled cooldown after it was sent
    clock.now = breaker.next_trial_at  # the second's hold (until sent + 11) is over with its period
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def test_a_circuit_closed_by_trials_clears_the_announced_trials(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, half_open_trials=1, trials_at_once=1)
    tracker = tracker_on(clock, config)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent), granted(sent + 0.5)])
    clock.advance(1.0)
    tracker.apply([verdict(sent, at=clock.now)])
    assert tracker.status(P).circuit is Circuit.CLOSED
    assert not tracker._providers[P].remote_trials
    clock.advance(0.5)
    tracker.record(P, duration_s=0.1, status_code=500, permit=tracker.allow(P))  # a relapse on probation
    assert tracker.status(P).circuit is Circuit.HALF_OPEN
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def test_a_probe_success_drops_the_announcements_sent_before_the_probe(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent), granted(sent + 1.0)])
    clock.advance(2.0)
    tracker.record_probe(P, True, sent_at=sent + 1.0)
    # Sent before the probe: overtaken; sent at the very time of the probe: not before it.
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)
    clock.now = sent + tracker.config.max_cooldown_s
    assert in_flight(tracker) == 1  # the first one's hold would be over now: the second is left
    clock.now = sent + 1.0 + tracker.config.max_cooldown_s
    assert in_flight(tracker) == 0


def test_a_probe_without_a_send_time_was_sent_as_it_ended(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent), granted(sent + 1.0)])
    clock.advance(2.0)
    tracker.record_probe(P, True)
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def test_a_failed_probe_drops_no_announcement(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent)])
    clock.advance(2.0)
    tracker.record_probe(P, False, sent_at=clock.now)
    assert in_flight(tracker) == 1


def test_a_passed_probe_that_does_not_convince_drops_no_announcement(clock: FakeClock) -> None:
    # The provider passes probes but fails calls (a trial a probe let through failed): one
    # passed probe leaves another host's trial its place, or every host sends one at once.
    tracker = tracker_on(clock)
    trip(tracker)
    clock.advance(1.0)
    tracker.record_probe(P, True, sent_at=clock.now)  # half-open at once
    trial = tracker.allow(P)
    clock.advance(0.5)
    tracker.record(P, duration_s=0.5, status_code=503, permit=trial)  # the trial it let through fails
    breaker = tracker._providers[P].breaker
    assert breaker.probes_misled
    clock.now = breaker.next_trial_at
    tracker.apply([granted(clock.now)])
    clock.advance(1.0)
    tracker.record_probe(P, True, sent_at=clock.now - 0.5)
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)
    # Passing for misled_probe_run_s, the probes convince again: they overtake it.
    for _ in range(2):
        clock.advance(1.0)
        assert in_flight(tracker) == 1
        tracker.record_probe(P, True, sent_at=clock.now - 0.5)
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def announced_trial(clock: FakeClock,
                    config: HealthConfig = CONFIG) -> tuple[HealthTracker, HealthTracker, Permit, float]:
    """Two processes half-open at the same moment (returned): the sender's trial is out,
    and the receiver holds its announcement."""
    sender, receiver = tracker_on(clock, config), tracker_on(clock, config)
    sent = half_open(sender, clock)
    half_open(receiver, clock)
    sender.share_outcomes()
    trial = sender.allow(P)
    assert trial.trial
    receiver.apply(sender.take_outcomes())
    assert in_flight(receiver) == 1
    return sender, receiver, trial, sent


def test_a_trial_voided_in_its_process_frees_its_announcement_everywhere(clock: FakeClock) -> None:
    # Its process heard another's failed trial first: the circuit moved on and the trial's own
    # failure is no verdict there. The others must still learn it is over, or its announcement
    # holds their trials for a cooldown.
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=20.0)  # announcements hold 20 s
    sender, receiver, trial, sent = announced_trial(clock, config)
    sender.apply([verdict(sent, outcome="failure", at=clock.now)])  # another trial sent then failed
    assert trial.void
    receiver.turn = Turns(wait_s=1.0)
    clock.advance(10.0)  # a cooldown later, the circuit half-open again in both
    assert in_flight(receiver) == 1  # still held
    sender.record(P, duration_s=10.0, status_code=503, permit=trial)
    shared = decode(encode(sender.take_outcomes()))  # as the channels carry it
    assert [(item.outcome, item.trial) for item in shared] == [("unreached", False), (VOIDED, True)]
    receiver.apply(shared)
    assert in_flight(receiver) == 0
    assert not receiver.allow(P)  # the door is free in every process at once: turns from now
    clock.advance(1.0)
    assert receiver.allow(P).trial


@pytest.mark.parametrize("status_code", [404, 401, 429])
def test_a_trial_that_ends_without_a_verdict_frees_its_announcement_everywhere(clock: FakeClock,
                                                                                status_code: int) -> None:
    # A 404, 401 or 429 is no verdict: its permit goes back in its own process, and the
    # others must hear the same, or its announcement holds their trials for a cooldown.
    sender, receiver, trial, _ = announced_trial(clock)
    receiver.turn = Turns(wait_s=1.0)
    clock.advance(0.5)
    retry_after_s = 30.0 if status_code == 429 else None
    sender.record(P, duration_s=0.5, status_code=status_code, retry_after_s=retry_after_s, permit=trial)
    receiver.apply(sender.take_outcomes())
    assert in_flight(receiver) == 0
    assert receiver.status(P).circuit is Circuit.HALF_OPEN
    if status_code == 429:  # its pause is every process's (choose ranks the provider out meanwhile)
        assert any(reason.startswith("throttled until") for reason in receiver.status(P).reasons)
    assert not receiver.allow(P)  # the door is free in every process at once: turns from now
    clock.advance(1.0)
    assert receiver.allow(P).trial


def test_a_voided_notice_of_no_announcement_held_here_leaves_the_turns(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    start = half_open(tracker, clock)
    tracker.turn = Turns(wait_s=1.0)
    clock.advance(0.5)
    tracker.apply([SharedOutcome(CALL, P, VOIDED, clock.now, start - 100.0, True)])  # never announced here
    clock.advance(0.5)
    assert tracker.allow(P).trial  # the turn counts from the half-open start still


# --- which announcements hold ----------------------------------------------------------------


def test_an_announced_retrial_holds_no_trial(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent, trial=False)])  # a call after a pause, not a trial
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def test_an_announced_trial_of_a_closed_circuit_holds_nothing_once_it_is_half_open(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, half_open_trials=1, trials_at_once=1)
    tracker = tracker_on(clock, config)
    half_open(tracker, clock)
    tracker.record(P, duration_s=0.1, status_code=200, permit=tracker.allow(P))
    assert tracker.status(P).circuit is Circuit.CLOSED  # on probation
    clock.advance(0.5)
    tracker.apply([granted(clock.now)])  # from a process that still read it half-open
    clock.advance(0.5)
    tracker.record(P, duration_s=0.1, status_code=500, permit=tracker.allow(P))  # back to half-open
    assert tracker.status(P).circuit is Circuit.HALF_OPEN
    assert in_flight(tracker) == 0
    assert tracker.allow(P).trial


def ranked_out(tracker: HealthTracker, clock: FakeClock, failures: dict[str, int]) -> None:
    """Ten calls to each provider, ``failures[name]`` of them failing (500: reached), spread so
    no circuit trips."""
    for index in range(10):
        for name, failed in failures.items():
            status = 500 if index < 2 * failed and index % 2 == 1 else 200
            tracker.record(name, duration_s=0.3, status_code=status, permit=tracker.allow(name))
        clock.advance(0.1)
    assert all(tracker.status(name).circuit is Circuit.CLOSED for name in failures)


def test_an_announced_trial_of_a_closed_circuit_still_counts_as_a_call_for_the_retrial(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 4})
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    assert tracker.choose(["good", "bad"], claim=False).order[0] == "bad"  # its retrial is due
    tracker.apply([granted(clock.now, trial=True, provider="bad")])
    assert tracker._providers["bad"].remote_trials == {}
    assert tracker.choose(["good", "bad"], claim=False).order[0] == "good"  # another process sent it


def test_no_more_than_max_remote_trials_announcements_are_kept(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent + index * 0.001) for index in range(MAX_REMOTE_TRIALS + 6)])
    assert in_flight(tracker) == MAX_REMOTE_TRIALS


def test_announcements_whose_hold_is_over_make_room_for_a_new_one(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    hold = min(CONFIG.trial_timeout_s, CONFIG.max_cooldown_s)
    # As many as are kept, every one's hold over already (announced long ago, heard late).
    tracker.apply([granted(sent - hold - 1.0 - index * 0.001) for index in range(MAX_REMOTE_TRIALS)])
    # Nothing read in between (a status forgets the announcements whose hold is over): the
    # new one finds every place taken, by announcements that no longer hold.
    tracker.apply([granted(sent)])
    assert in_flight(tracker) == 1
    assert not tracker.allow(P)


# --- turns --------------------------------------------------------------------------------


def test_a_trial_takes_its_turn_for_the_breakers_trips_as_its_cycle(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    half_open(tracker, clock)
    turns = tracker.turn = Turns()
    tracker.choose([P])
    assert turns.calls and all(provider == P for provider, _ in turns.calls)
    assert (P, 1) in turns.calls  # the first trip's cycle
    assert {cycle for _, cycle in turns.calls} <= {1, -1}
    turns.calls.clear()
    permit = tracker.allow(P)
    assert permit.trial
    assert turns.calls == [(P, 1)]
    clock.advance(0.1)
    tracker.record(P, duration_s=0.1, status_code=500, permit=permit)  # the trial failed
    clock.advance(tracker.config.max_cooldown_s)
    turns.calls.clear()
    assert tracker.allow(P).trial
    assert turns.calls == [(P, 2)]  # the next cycle


def test_a_retrial_takes_its_turn_with_cycle_minus_one(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 4})
    turns = tracker.turn = Turns()
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    assert tracker.choose(["good", "bad"]).order[0] == "bad"
    assert ("bad", -1) in turns.calls
    assert {cycle for _, cycle in turns.calls} == {-1}
    assert {provider for provider, _ in turns.calls} <= {"good", "bad"}


def test_a_retrial_waits_as_long_as_its_turn_says(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 4})
    tracker.turn = Turns(wait_s=0.5)
    clock.advance(CONFIG.max_cooldown_s + 0.25)
    assert tracker.choose(["good", "bad"]).order[0] == "good"
    clock.advance(0.5)
    assert tracker.choose(["good", "bad"]).order[0] == "bad"


def test_a_probed_retrial_takes_its_turn_from_the_probe_that_made_it_due(clock: FakeClock) -> None:
    """Every host hears the second passed probe at about the same moment: the turns count
    from then, not from the last call, or every host would call the provider at once."""
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 4})
    tracker.turn = Turns(wait_s=0.5)
    clock.advance(CONFIG.open_cooldown_s + 2.0)
    tracker.record_probe("bad", True, sent_at=clock.now - 1.0)
    clock.advance(1.0)
    tracker.record_probe("bad", True, sent_at=clock.now - 0.5)  # heard now: two passes in a row, due now
    assert tracker.choose(["good", "bad"]).order[0] == "good"
    clock.advance(0.4)
    tracker.record_probe("bad", True, sent_at=clock.now)  # a third changes nothing
    assert tracker.choose(["good", "bad"]).order[0] == "good"
    clock.advance(0.1)
    assert tracker.choose(["good", "bad"]).order[0] == "bad"


def test_a_trial_of_its_own_overtaken_by_a_probe_starts_the_turns_again(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    half_open(tracker, clock)
    trial = tracker.allow(P)
    assert trial.trial
    tracker.turn = Turns(wait_s=1.0)
    clock.advance(3.0)
    tracker.record_probe(P, True, sent_at=clock.now - 0.5)  # overtakes it
    assert trial.void
    assert not tracker.allow(P)  # the other hosts heard the probe too: turns from now
    clock.advance(1.0)
    assert tracker.allow(P).trial


def test_a_passed_probe_that_overtakes_nothing_leaves_the_turns(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    half_open(tracker, clock)
    tracker.turn = Turns(wait_s=1.0)
    clock.advance(0.5)
    tracker.record_probe(P, True, sent_at=clock.now)  # no trial out anywhere: no door freed
    clock.advance(0.5)
    assert tracker.allow(P).trial


def test_a_probed_retrial_takes_its_turn_from_a_cooldown_after_the_last_call(clock: FakeClock) -> None:
    """Two passes heard soon after the last call: the retrial comes due a cooldown after
    that call, and the turns count from then."""
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 4})
    last_call = clock.now - 0.1
    tracker.turn = Turns(wait_s=0.5)
    for heard in (1.0, 2.0):
        clock.now = last_call + heard
        tracker.record_probe("bad", True, sent_at=clock.now - 0.5)
    clock.now = last_call + CONFIG.open_cooldown_s + 0.25
    assert tracker.choose(["good", "bad"]).order[0] == "good"
    clock.now = last_call + CONFIG.open_cooldown_s + 0.5
    assert tracker.choose(["good", "bad"]).order[0] == "bad"


def test_the_turn_of_a_relapse_on_probation_counts_from_its_own_move(clock: FakeClock) -> None:
    """A failure on probation moves the circuit to half-open at once: the turn counts from
    that moment, even when the last trip's cooldown would have ended earlier and that trip
    came at the very moment the circuit then closed (a probe took it to half-open)."""
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, consecutive_failures=1,
                          half_open_trials=1, trials_at_once=1, probation_s=60.0)
    clock.now = 990.0
    tracker = tracker_on(clock, config)
    trip(tracker)
    clock.now = 1000.0
    trial = tracker.allow(P)
    assert trial.trial
    tracker.record(P, duration_s=0.1, status_code=500, permit=trial)  # fails: open again, 10 s
    breaker = tracker._providers[P].breaker
    assert breaker.state is Circuit.OPEN and breaker.next_trial_at == 1010.0
    tracker.record_probe(P, True)  # the provider is back: half-open at once
    trial = tracker.allow(P)
    tracker.record(P, duration_s=0.1, status_code=200, permit=trial)
    assert breaker.state is Circuit.CLOSED and breaker.closed_at == 1000.0
    clock.now = 1016.0  # on probation, past the end the old cooldown had
    tracker.record(P, duration_s=0.1, status_code=500, permit=tracker.allow(P))
    assert breaker.state is Circuit.HALF_OPEN
    tracker.turn = Turns(wait_s=2.0)
    clock.now = 1017.5
    assert not tracker.allow(P)  # its turn comes 2 s after 1016
    clock.now = 1018.0
    assert tracker.allow(P).trial


def test_the_turn_of_a_late_move_to_half_open_counts_from_the_end_of_the_cooldown(clock: FakeClock) -> None:
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, consecutive_failures=1,
                          half_open_trials=1, trials_at_once=1, probation_s=60.0)
    tracker = tracker_on(clock, config)
    late = tracker.allow(P)
    trip(tracker)  # at 1000: due at 1005 everywhere
    clock.now = 1008.0
    tracker.record(P, duration_s=0.1, status_code=200, permit=late)  # moves it here, at 1008
    assert tracker._providers[P].breaker.state is Circuit.HALF_OPEN
    tracker.turn = Turns(wait_s=2.0)
    assert tracker.allow(P).trial  # the turn came at 1007


def test_a_probe_that_overtakes_the_trials_out_starts_the_turns_again(clock: FakeClock) -> None:
    """Every host hears the probe at about the same moment and finds the door free: the
    next trial takes turns from then, or each host would send one at once."""
    tracker = tracker_on(clock)
    sent = half_open(tracker, clock)
    tracker.apply([granted(sent)])
    tracker.turn = Turns(wait_s=1.0)
    clock.advance(3.0)  # long past this host's turn of the half-open period
    tracker.record_probe(P, True, sent_at=clock.now - 0.5)  # overtakes the trial out
    assert in_flight(tracker) == 0
    assert not tracker.allow(P)  # its turn comes 1 s after the probe
    clock.advance(1.0)
    assert tracker.allow(P).trial


def test_a_trial_sent_before_this_hosts_own_failure_on_probation_still_decides(clock: FakeClock) -> None:
    """Hosts fail on probation each at a call of its own, a moment apart: another host's
    trial, sent before this one moved to half-open, is a trial of the same period, and its
    failure opens the circuit here too (or this host sends a trial of its own into it)."""
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, consecutive_failures=1,
                          half_open_trials=1, trials_at_once=1, probation_s=60.0)
    tracker = tracker_on(clock, config)
    trip(tracker)
    clock.advance(5.0)
    tracker.record(P, duration_s=0.1, status_code=200, permit=tracker.allow(P))  # closed, on probation
    breaker = tracker._providers[P].breaker
    assert breaker.state is Circuit.CLOSED
    clock.advance(10.0)
    other_trial = clock.now  # sent by a host that had failed on probation just before
    clock.advance(0.1)
    tracker.record(P, duration_s=0.1, status_code=500, permit=tracker.allow(P))  # this host's own
    assert breaker.state is Circuit.HALF_OPEN
    clock.advance(0.2)
    tracker.apply([verdict(other_trial, outcome="failure", at=clock.now)])
    assert breaker.state is Circuit.OPEN


class NoCadence:
    """A channel that crosses hosts and has no cadence of its own."""

    name = "no-cadence"

    def __init__(self, host_id: str, hosts: tuple[str, ...]) -> None:
        self.host_id = host_id
        self.hosts = hosts

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        pass

    def receive(self) -> list[SharedOutcome]:
        return []

    def close(self) -> None:
        pass


class Cadenced(NoCadence):
    name = "cadenced"

    def __init__(self, host_id: str, hosts: tuple[str, ...], interval_s: float | None) -> None:
        super().__init__(host_id, hosts)
        self.interval_s = interval_s


HOSTS = ("host-a", "host-b", "host-c")


@pytest.mark.parametrize("host", HOSTS)
def test_a_host_waits_its_place_times_turn_rounds_of_the_channel(clock: FakeClock, host: str) -> None:
    tracker = tracker_on(clock)
    Sharing(tracker, [Cadenced(host, HOSTS, 0.2)], interval_s=0.025, clock=clock).attach()
    turn = tracker.turn
    assert turn is not None
    for cycle in range(-1, 12):
        place = turn_place(HOSTS, host, P, cycle)
        assert turn(P, cycle) == pytest.approx(place * TURN_ROUNDS * 0.2)
    assert len({turn(P, cycle) for cycle in range(-1, 12)}) > 1  # the places go round


@pytest.mark.parametrize("channel", [NoCadence("host-b", HOSTS), Cadenced("host-b", HOSTS, None)])
def test_a_channel_without_a_cadence_takes_turns_of_the_sharing_rounds(clock: FakeClock, channel: NoCadence) -> None:
    tracker = tracker_on(clock)
    Sharing(tracker, [channel], interval_s=0.04, clock=clock).attach()
    turn = tracker.turn
    assert turn is not None
    for cycle in range(-1, 12):
        assert turn(P, cycle) == pytest.approx(turn_place(HOSTS, "host-b", P, cycle) * TURN_ROUNDS * 0.04)


# --- retrial claims in choose ------------------------------------------------------------------


def test_a_retrial_is_claimed_only_for_a_provider_ranked_below_the_best(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    # good scores 1.0; bad (one failure in ten) 0.94: the next tier; worse: far below.
    ranked_out(tracker, clock, {"good": 0, "bad": 1, "worse": 4})
    gate = Gate(answer=True)
    tracker.trial_gate = gate
    clock.advance(CONFIG.max_cooldown_s + 0.01)  # every one of them is idle: a retrial is due
    choice = tracker.choose(["good", "bad", "worse"])
    assert {name for name, _, _, _ in gate.claims} == {"bad\0retrial", "worse\0retrial"}
    assert all((issued, deadline, limit) == (clock.now, clock.now + RETRIAL_CLAIM_S, 1)
               for _, issued, deadline, limit in gate.claims)
    assert choice.order == ["bad", "worse", "good"]  # claimed: tested first, by tier
    gate.claims.clear()
    tracker.choose(["good", "bad", "worse"], claim=False)
    assert gate.claims == []  # reading claims nothing


def test_a_retrial_refused_on_the_gate_ranks_like_any_other(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "bad": 1, "worse": 4})
    trip(tracker, "mending")
    gate = Gate(answer=False)  # another worker of the host sends them
    tracker.trial_gate = gate
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    tracker.allow("worse")  # a call went to it just now: no retrial due
    choice = tracker.choose(["worse", "bad", "good", "mending"])
    assert [name for name, _, _, _ in gate.claims] == ["bad\0retrial"]
    # Half-open first (its trial), then by tier: the refused retrial among the others.
    assert choice.order == ["mending", "good", "bad", "worse"]


def test_providers_of_the_best_tier_are_never_claimed(clock: FakeClock) -> None:
    tracker = tracker_on(clock)
    ranked_out(tracker, clock, {"good": 0, "fine": 0})
    gate = Gate(answer=True)
    tracker.trial_gate = gate
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    tracker.choose(["good", "fine"])
    assert gate.claims == []


# --- probes cancelled ---------------------------------------------------------------------


def test_a_stopped_probe_loop_waits_for_its_probes_to_finish_cancelling(clock: FakeClock) -> None:
    tracker = tracker_on(clock)

    class Hanging(ProbeRunner):
        started: asyncio.Event
        cleaned = False

        async def probe(self, provider: str, client: object) -> bool:  # type: ignore[override]
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                for _ in range(3):  # cleaning up takes a few steps of the loop
                    await asyncio.sleep(0)
                self.cleaned = True
                raise
            return True

    async def run() -> bool:
        runner = Hanging(tracker, {P: "http://probe.invalid/health"}, interval_s=1.0, unhealthy_interval_s=1.0)
        runner.started = asyncio.Event()
        loop_task = asyncio.get_running_loop().create_task(runner._probe_loop(P, None))  # type: ignore[arg-type]
        await runner.started.wait()
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task
        return runner.cleaned

    assert asyncio.run(run())
