"""The circuit breaker of one provider (SPEC section 5), rule by rule, on hand-made times.

closed -> open after ``consecutive_failures`` failures in a row, or when at least
``min_calls`` calls in the window fail at ``failure_rate`` or more; open -> half-open when
the cooldown is over (or at once when a probe succeeds); half-open lets ``trials_at_once``
trials through, closes when ``half_open_trials`` have passed, reopens on one failure with
the cooldown doubled up to ``max_cooldown_s``; a closed circuit on probation goes back to
half-open on its first failure. Every outcome is matched to its call's permit.

Defaults used below (app/scoring/config.py): 5 in a row, 50% of at least 10 calls, a 60 s
window, a 5 s cooldown doubling to 10 s, 3 trials one at a time, 300 s before a trial is
presumed lost, 60 s of probation.
"""

from __future__ import annotations

import pytest

from app.scoring import Circuit, HealthConfig, Permit
from app.scoring.breaker import Breaker, Transition

T0 = 1000.0


def moves_of(transitions: list[Transition]) -> list[tuple[str, str]]:
    return [(move.from_state.value, move.to_state.value) for move in transitions]


def tripped(config: HealthConfig | None = None, at: float = T0) -> Breaker:
    """A breaker opened by ``consecutive_failures`` failures at ``at``."""
    breaker = Breaker(config or HealthConfig())
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(at, True, "timeout")
    assert breaker.state is Circuit.OPEN
    return breaker


def closed_after_trials(config: HealthConfig | None = None) -> tuple[Breaker, float]:
    """A breaker tripped at T0 and closed again by its trials; returns it and the time."""
    breaker = tripped(config)
    now = T0 + breaker.cooldown_s
    for _ in range(breaker.config.half_open_trials):
        permit, _ = breaker.allow("p", now)
        assert permit.trial
        breaker.record(now, False, "", permit)
    assert breaker.state is Circuit.CLOSED
    return breaker, now


# --- closed -> open ---------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_grants_calls() -> None:
    breaker = Breaker(HealthConfig())

    permit, moves = breaker.allow("p", T0)

    assert breaker.state is Circuit.CLOSED
    assert permit and not permit.trial and moves == []
    assert (permit.provider, permit.period, permit.issued) == ("p", 0, T0)


def test_four_failures_in_a_row_keep_it_closed_the_fifth_opens_it() -> None:
    breaker = Breaker(HealthConfig())
    for _ in range(4):
        assert breaker.record(T0, True, "timeout") == []

    moves = breaker.record(T0, True, "server_error 500")

    assert moves == [Transition(Circuit.CLOSED, Circuit.OPEN, "5 consecutive failures (last: server_error 500)")]
    assert breaker.state is Circuit.OPEN
    assert breaker.open_reason == "5 consecutive failures (last: server_error 500)"
    assert (breaker.since, breaker.cooldown_s, breaker.next_trial_at) == (T0, 5.0, T0 + 5.0)
    assert breaker.trips == 1


@pytest.mark.parametrize("run", [1, 2, 3, 7])
def test_n_consecutive_failures_is_configurable(run: int) -> None:
    breaker = Breaker(HealthConfig(consecutive_failures=run, min_calls=100))
    for _ in range(run - 1):
        breaker.record(T0, True, "x")
    assert breaker.state is Circuit.CLOSED

    breaker.record(T0, True, "x")

    assert breaker.state is Circuit.OPEN


def test_a_success_ends_the_run_of_failures() -> None:
    breaker = Breaker(HealthConfig())
    for _ in range(4):
        breaker.record(T0, True, "x")
    breaker.record(T0, False, "")
    for _ in range(4):
        breaker.record(T0, True, "x")

    assert breaker.state is Circuit.CLOSED  # 8 of 9 failed, but fewer than 10 calls
    assert breaker.consecutive == 4


def test_a_success_of_a_call_sent_before_the_latest_failure_does_not_end_the_run() -> None:
    breaker = Breaker(HealthConfig())
    early, _ = breaker.allow("p", T0)  # a long call, admitted first
    for _ in range(4):
        late, _ = breaker.allow("p", T0 + 1)
        breaker.record(T0 + 2, True, "timeout", late)

    breaker.record(T0 + 3, False, "", early)  # succeeds now: says nothing of the provider since
    last, _ = breaker.allow("p", T0 + 3)
    moves = breaker.record(T0 + 4, True, "timeout", last)

    assert moves_of(moves) == [("closed", "open")]


def test_a_success_sent_at_the_same_moment_as_the_latest_failure_ends_the_run() -> None:
    breaker = Breaker(HealthConfig())
    for _ in range(4):
        failed, _ = breaker.allow("p", T0)
        breaker.record(T0 + 1, True, "timeout", failed)
    same, _ = breaker.allow("p", T0)

    breaker.record(T0 + 2, False, "", same)

    assert breaker.consecutive == 0


@pytest.mark.parametrize(("failures", "opens"), [(4, False), (5, True)])
def test_half_of_ten_calls_failing_opens_it(failures: int, opens: bool) -> None:
    breaker = Breaker(HealthConfig())
    outcomes = [True] * failures + [False] * (10 - failures)
    # Interleaved so no run reaches 5: F S F S ...
    order = [outcome for pair in zip(outcomes[:5], outcomes[5:], strict=True) for outcome in pair]
    moves: list[Transition] = []
    for failed in order:
        moves = breaker.record(T0, failed, "x")

    assert (breaker.state is Circuit.OPEN) is opens
    if opens:
        assert moves == [Transition(Circuit.CLOSED, Circuit.OPEN, "5 of the last 10 calls failed")]


def test_a_high_failure_rate_under_min_calls_keeps_it_closed() -> None:
    breaker = Breaker(HealthConfig())
    for failed in [True, True, True, True, False, True, True, True, True]:  # 8 of 9
        breaker.record(T0, failed, "x")

    assert breaker.state is Circuit.CLOSED

    breaker.record(T0, False, "")  # the tenth call: 8 of 10

    assert breaker.state is Circuit.OPEN
    assert breaker.open_reason == "8 of the last 10 calls failed"


def test_the_rate_counts_only_calls_within_the_window() -> None:
    config = HealthConfig(window_s=60.0)
    breaker = Breaker(config)
    for _ in range(4):
        breaker.record(T0, True, "x")
    breaker.record(T0, False, "")
    # 60 s later the first five are still in the window (older than 60 s leave it) ...
    for _ in range(4):
        breaker.record(T0 + 60, True, "x")
    breaker.record(T0 + 60, False, "")
    assert breaker.state is Circuit.OPEN  # 8 of 10

    breaker = Breaker(config)
    for _ in range(4):
        breaker.record(T0, True, "x")
    breaker.record(T0, False, "")
    for _ in range(4):
        breaker.record(T0 + 60.5, True, "x")
    breaker.record(T0 + 60.5, False, "")

    assert breaker.state is Circuit.CLOSED  # ... past 60 s they are gone: 4 of 5
    assert (len(breaker.recent), breaker.recent_failures) == (5, 4)


def test_failure_rate_threshold_is_configurable() -> None:
    breaker = Breaker(HealthConfig(failure_rate=0.3, min_calls=10))
    for failed in [True, False, False, True, False, False, True, False, False, False]:
        breaker.record(T0, failed, "x")

    assert breaker.state is Circuit.OPEN
    assert breaker.open_reason == "3 of the last 10 calls failed"


# --- open -----------------------------------------------------------------------------------


def test_an_open_circuit_denies_calls_until_its_cooldown_is_over() -> None:
    breaker = tripped()

    permit, moves = breaker.allow("p", T0 + 4.9)

    assert not permit and moves == []
    assert breaker.effective_state(T0 + 4.9) is Circuit.OPEN
    assert not breaker.would_allow(T0 + 4.9)
    assert breaker.trials_out(T0 + 4.9) == 0


def test_at_the_end_of_the_cooldown_it_reads_as_half_open_and_moves_on_the_next_call() -> None:
    breaker = tripped()

    assert breaker.effective_state(T0 + 5.0) is Circuit.HALF_OPEN
    assert breaker.state is Circuit.OPEN  # reading moves nothing
    assert breaker.would_allow(T0 + 5.0)

    permit, moves = breaker.allow("p", T0 + 5.0)

    assert moves == [Transition(Circuit.OPEN, Circuit.HALF_OPEN, "cooldown of 5 s over")]
    assert permit and permit.trial
    assert permit.deadline == T0 + 5.0 + 300.0
    assert (permit.period, permit.issued) == (breaker.period, T0 + 5.0) == (2, T0 + 5.0)
    assert breaker.state is Circuit.HALF_OPEN
    assert (breaker.since, breaker.half_open_since) == (T0 + 5.0, T0 + 5.0)


def test_an_outcome_without_a_permit_while_open_is_no_news() -> None:
    breaker = tripped()

    assert breaker.record(T0 + 1, True, "x") == []
    assert breaker.record(T0 + 1, False, "") == []
    assert breaker.state is Circuit.OPEN
    assert breaker.next_trial_at == T0 + 5.0


def test_every_change_of_state_starts_a_new_period() -> None:
    breaker = Breaker(HealthConfig())
    assert breaker.period == 0
    for _ in range(5):
        breaker.record(T0, True, "x")
    assert breaker.period == 1
    breaker.allow("p", T0 + 5)
    assert breaker.period == 2


# --- half-open --------------------------------------------------------------------------------


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    breaker = tripped()
    first, _ = breaker.allow("p", T0 + 5)

    second, moves = breaker.allow("p", T0 + 6)

    assert first.trial and not second and moves == []
    assert breaker.trials_out(T0 + 6) == 1
    assert not breaker.would_allow(T0 + 6)


def test_trials_at_once_is_configurable() -> None:
    breaker = tripped(HealthConfig(trials_at_once=2))
    permits = [breaker.allow("p", T0 + 5)[0] for _ in range(3)]

    assert [bool(permit) for permit in permits] == [True, True, False]
    assert breaker.trials_out(T0 + 5) == 2


def test_three_passed_trials_close_the_circuit() -> None:
    breaker = tripped()
    now = T0 + 5
    for passed in range(2):
        permit, _ = breaker.allow("p", now)
        assert breaker.record(now + 1, False, "", permit) == []
        assert breaker.trials_passed == passed + 1
        now += 2

    permit, _ = breaker.allow("p", now)
    moves = breaker.record(now + 1, False, "", permit)

    assert moves == [Transition(Circuit.HALF_OPEN, Circuit.CLOSED, "3 trial calls passed")]
    assert breaker.state is Circuit.CLOSED
    assert breaker.closed_at == breaker.since == now + 1
    assert breaker.allow("p", now + 1)[0]


def test_a_failed_trial_reopens_with_the_cooldown_doubled_from_when_it_was_sent() -> None:
    breaker = tripped()
    permit, _ = breaker.allow("p", T0 + 5)

    moves = breaker.record(T0 + 8, True, "timeout", permit)

    assert moves == [Transition(Circuit.HALF_OPEN, Circuit.OPEN, "a trial call failed (timeout)")]
    assert breaker.cooldown_s == 10.0
    assert breaker.next_trial_at == T0 + 5 + 10.0  # sent at +5, not failed at +8
    assert breaker.since == T0 + 8
    assert breaker.trips == 2


def test_a_trial_that_failed_after_its_whole_cooldown_waits_no_more() -> None:
    breaker = tripped()
    permit, _ = breaker.allow("p", T0 + 5)

    breaker.record(T0 + 40, True, "timeout", permit)  # sent +5, cooldown 10: due at +15, past

    assert breaker.next_trial_at == T0 + 40


def test_the_cooldown_doubles_on_each_retrip_up_to_the_cap() -> None:
    breaker = tripped(HealthConfig(open_cooldown_s=5.0, max_cooldown_s=30.0))
    cooldowns = [breaker.cooldown_s]
    for _ in range(4):
        now = breaker.next_trial_at
        permit, _ = breaker.allow("p", now)
        breaker.record(now, True, "x", permit)
        cooldowns.append(breaker.cooldown_s)

    assert cooldowns == [5.0, 10.0, 20.0, 30.0, 30.0]


def test_a_failed_trial_without_a_permit_counts_as_sent_now() -> None:
    breaker = tripped()
    breaker.allow("p", T0 + 5)  # its permit is not handed back

    moves = breaker.record(T0 + 6, True, "x")

    assert moves_of(moves) == [("half_open", "open")]
    assert breaker.next_trial_at == T0 + 6 + 10.0


def test_a_passed_trial_without_a_permit_takes_the_oldest_trial_out() -> None:
    breaker = tripped()
    permit, _ = breaker.allow("p", T0 + 5)

    breaker.record(T0 + 6, False, "")

    assert permit.void
    assert breaker.trials_passed == 1
    assert breaker.trials_out(T0 + 6) == 0
    assert breaker.allow("p", T0 + 6)[0].trial


def test_trials_without_permits_pass_even_with_no_trial_out() -> None:
    breaker = tripped()
    breaker.allow("p", T0 + 5)
    for _ in range(3):
        breaker.record(T0 + 6, False, "")

    assert breaker.state is Circuit.CLOSED


def test_a_trial_permit_not_back_within_its_timeout_is_presumed_lost() -> None:
    breaker = tripped(HealthConfig(trial_timeout_s=30.0))
    lost, _ = breaker.allow("p", T0 + 5)

    assert not breaker.allow("p", T0 + 34.9)[0]
    assert breaker.trials_out(T0 + 34.9) == 1
    assert breaker.trials_out(T0 + 35) == 0
    assert breaker.would_allow(T0 + 35)

    fresh, _ = breaker.allow("p", T0 + 35)
    assert fresh.trial and lost.void
    assert breaker.record(T0 + 36, True, "late", lost) == []  # its late answer is no trial
    assert breaker.state is Circuit.HALF_OPEN


def test_a_lost_trials_late_answer_is_no_trial_even_without_a_new_call() -> None:
    breaker = tripped(HealthConfig(trial_timeout_s=30.0))
    lost, _ = breaker.allow("p", T0 + 5)

    assert breaker.record(T0 + 35, True, "late", lost) == []
    assert lost.void
    assert breaker.state is Circuit.HALF_OPEN


def test_a_released_trial_permit_comes_back_for_another_call() -> None:
    breaker = tripped()
    permit, _ = breaker.allow("p", T0 + 5)

    assert breaker.release(T0 + 6, permit) == []

    assert breaker.trials_out(T0 + 6) == 0
    assert breaker.trials_passed == 0
    assert breaker.allow("p", T0 + 6)[0].trial
    assert breaker.state is Circuit.HALF_OPEN


def test_a_release_without_a_permit_frees_the_oldest_trial() -> None:
    breaker = tripped(HealthConfig(trials_at_once=2))
    first, _ = breaker.allow("p", T0 + 5)
    second, _ = breaker.allow("p", T0 + 6)

    breaker.release(T0 + 7, None)

    assert first.void and not second.void
    assert breaker.trials_out(T0 + 7) == 1


def test_a_release_while_closed_changes_nothing() -> None:
    breaker = Breaker(HealthConfig())
    for _ in range(4):
        breaker.record(T0, True, "x")

    assert breaker.release(T0, None) == []
    assert (breaker.state, breaker.consecutive, len(breaker.recent)) == (Circuit.CLOSED, 4, 4)


def test_release_makes_a_due_move() -> None:
    breaker = tripped()

    assert moves_of(breaker.release(T0 + 5, None)) == [("open", "half_open")]


# --- permits --------------------------------------------------------------------------------------


def test_a_permit_is_truthy_only_when_granted_and_says_what_it_is() -> None:
    assert bool(Permit("p", True, 3, T0)) and not Permit("p", False, 3, T0)
    assert repr(Permit("p", True, 3, T0)) == "Permit('p', call, period=3)"
    assert repr(Permit("p", True, 4, T0, trial=True)) == "Permit('p', trial, period=4)"
    assert repr(Permit("p", False, 5, T0)) == "Permit('p', denied, period=5)"
    fresh = Permit("p", True, 0, T0)
    assert (fresh.trial, fresh.deadline, fresh.returned, fresh.void) == (False, 0.0, False, False)


def test_a_call_admitted_before_a_trip_is_no_trial() -> None:
    breaker = Breaker(HealthConfig())
    old, _ = breaker.allow("p", T0)
    for _ in range(5):
        breaker.record(T0, True, "x")
    trial, _ = breaker.allow("p", T0 + 5)

    assert breaker.record(T0 + 6, True, "x", old) == []  # its failure says nothing of now

    assert breaker.state is Circuit.HALF_OPEN
    assert breaker.trials_out(T0 + 6) == 1
    assert not trial.void


def test_a_call_admitted_before_a_trip_never_reopens_a_circuit_closed_since() -> None:
    breaker = Breaker(HealthConfig(probation_s=0.0))
    old, _ = breaker.allow("p", T0 - 1)
    for _ in range(5):
        breaker.record(T0, True, "x")
    now = T0 + 5
    for _ in range(3):
        trial, _ = breaker.allow("p", now)
        breaker.record(now, False, "", trial)
    assert breaker.state is Circuit.CLOSED

    for _ in range(5):
        assert breaker.record(now + 1, True, "x", old) == []

    assert breaker.state is Circuit.CLOSED
    assert breaker.consecutive == 0


def test_a_permit_handed_back_twice_counts_once() -> None:
    breaker = Breaker(HealthConfig())
    permit, _ = breaker.allow("p", T0)

    breaker.record(T0, True, "x", permit)
    for _ in range(4):
        breaker.record(T0, True, "x", permit)

    assert breaker.consecutive == 1
    assert len(breaker.recent) == 1
    assert permit.returned


def test_a_denied_permit_never_counts() -> None:
    breaker = tripped()
    denied, _ = breaker.allow("p", T0 + 1)
    breaker.allow("p", T0 + 5)  # half-open now

    assert breaker.record(T0 + 6, True, "x", denied) == []
    assert breaker.state is Circuit.HALF_OPEN


def test_a_trial_permit_counts_only_while_half_open() -> None:
    breaker, now = closed_after_trials(HealthConfig(probation_s=0.0))
    stray = Permit("p", True, breaker.period, now, trial=True, deadline=now + 300)

    assert breaker.record(now, True, "x", stray) == []
    assert breaker.consecutive == 0


def test_an_unknown_trial_permit_in_half_open_is_no_verdict() -> None:
    breaker = tripped()
    breaker.allow("p", T0 + 5)
    stranger = Permit("p", True, breaker.period, T0 + 5, trial=True, deadline=T0 + 400)

    assert breaker.record(T0 + 6, False, "", stranger) == []
    assert breaker.trials_passed == 0


def test_a_call_permit_counts_only_in_the_period_it_was_granted_in() -> None:
    breaker = Breaker(HealthConfig())
    permit, _ = breaker.allow("p", T0)

    breaker.record(T0, True, "x", permit)
    assert breaker.consecutive == 1

    foreign = Permit("p", True, breaker.period + 1, T0)  # not of this period
    breaker.record(T0, True, "x", foreign)
    assert breaker.consecutive == 1


# --- probes ------------------------------------------------------------------------------------


def test_a_probe_success_moves_an_open_circuit_to_half_open_at_once() -> None:
    breaker = tripped()

    moves = breaker.probe_succeeded(T0 + 1)

    assert moves == [Transition(Circuit.OPEN, Circuit.HALF_OPEN, "a probe succeeded")]
    assert breaker.state is Circuit.HALF_OPEN
    assert breaker.half_open_since == T0 + 1
    assert breaker.allow("p", T0 + 1)[0].trial


def test_a_probe_success_while_closed_changes_nothing() -> None:
    breaker = Breaker(HealthConfig())

    assert breaker.probe_succeeded(T0) == []
    assert (breaker.state, breaker.period) == (Circuit.CLOSED, 0)


def test_a_probe_success_overtakes_the_trials_sent_before_it() -> None:
    breaker = tripped(HealthConfig(trials_at_once=3))
    before, _ = breaker.allow("p", T0 + 5)
    same, _ = breaker.allow("p", T0 + 7)
    after, _ = breaker.allow("p", T0 + 8)

    assert breaker.probe_succeeded(T0 + 9, sent=T0 + 7) == []

    assert (before.void, same.void, after.void) == (True, False, False)
    assert breaker.trials_out(T0 + 9) == 2
    assert breaker.record(T0 + 10, True, "late timeout", before) == []  # overtaken: no verdict
    assert breaker.state is Circuit.HALF_OPEN


def test_a_probe_success_without_a_send_time_overtakes_every_trial_out() -> None:
    breaker = tripped(HealthConfig(trials_at_once=2))
    first, _ = breaker.allow("p", T0 + 5)
    second, _ = breaker.allow("p", T0 + 6)

    breaker.probe_succeeded(T0 + 7)

    assert first.void and second.void
    assert breaker.trials_out(T0 + 7) == 0


def misled() -> Breaker:
    """A breaker whose trial, let through by a probe at T0 + 1, failed at T0 + 2."""
    breaker = tripped()
    breaker.probe_succeeded(T0 + 1, sent=T0 + 1)
    trial, _ = breaker.allow("p", T0 + 1)
    moves = breaker.record(T0 + 2, True, "server_error 503", trial)
    assert moves_of(moves) == [("half_open", "open")] and breaker.probes_misled
    return breaker


def test_after_a_probe_let_a_failing_trial_through_one_passed_probe_ends_no_cooldown() -> None:
    # The provider answers probes but fails calls (a rising error rate): probes that pass one
    # time in two would otherwise end every cooldown within a second or two.
    breaker = misled()

    assert breaker.probe_succeeded(T0 + 3, sent=T0 + 3, passing_since=T0 + 3) == []
    assert breaker.state is Circuit.OPEN
    assert breaker.next_trial_at == T0 + 1 + 10  # the doubled cooldown, from the trial's send


def test_after_a_misled_probe_a_run_of_passes_for_misled_probe_run_s_ends_the_cooldown() -> None:
    breaker = misled()
    assert breaker.probe_succeeded(T0 + 4.9, sent=T0 + 4.9, passing_since=T0 + 3) == []

    moves = breaker.probe_succeeded(T0 + 5, sent=T0 + 5, passing_since=T0 + 3)

    assert moves == [Transition(Circuit.OPEN, Circuit.HALF_OPEN, "a probe succeeded")]
    assert breaker.probes_misled  # until the circuit closes


def test_after_a_misled_probe_one_passed_probe_leaves_a_trial_out_its_place() -> None:
    # The cooldown ran out and a trial is out: a probe that passes once in two would free
    # its place for another trial into the failing provider, and another, before it answers.
    breaker = misled()
    trial, _ = breaker.allow("p", T0 + 11)
    assert trial.trial

    assert breaker.probe_succeeded(T0 + 12, sent=T0 + 12, passing_since=T0 + 12) == []

    assert not trial.void and breaker.trials_out(T0 + 12) == 1
    assert not breaker.allow("p", T0 + 12)[0].granted
    # A run of passes for misled_probe_run_s, all sent since the circuit opened, still does.
    breaker.probe_succeeded(T0 + 14, sent=T0 + 14, passing_since=T0 + 12)
    assert trial.void and breaker.trials_out(T0 + 14) == 0


def test_after_a_misled_probe_a_run_begun_while_open_frees_a_trial_out_in_half_open() -> None:
    breaker = misled()  # open again at T0 + 2, its next trial due at T0 + 11
    trial, _ = breaker.allow("p", T0 + 11)
    assert trial.trial

    breaker.probe_succeeded(T0 + 12, sent=T0 + 12, passing_since=T0 + 10)  # passing since it was open

    assert trial.void


def test_a_run_of_passes_that_began_before_the_circuit_reopened_does_not_count() -> None:
    breaker = misled()

    assert breaker.probe_succeeded(T0 + 6, sent=T0 + 6, passing_since=T0 + 1) == []
    assert breaker.state is Circuit.OPEN


def test_a_run_of_passes_that_began_the_moment_the_circuit_reopened_counts() -> None:
    breaker = misled()  # reopened at T0 + 2

    moves = breaker.probe_succeeded(T0 + 4, sent=T0 + 4, passing_since=T0 + 2)

    assert moves_of(moves) == [("open", "half_open")]


def test_a_trial_that_fails_after_the_cooldown_ran_out_leaves_probes_trusted() -> None:
    breaker = tripped()
    trial, _ = breaker.allow("p", T0 + 5)  # half-open when the 5 s cooldown is over

    breaker.record(T0 + 6, True, "server_error 503", trial)

    assert not breaker.probes_misled
    assert breaker.probe_succeeded(T0 + 7, sent=T0 + 7)[0].to_state is Circuit.HALF_OPEN


def test_a_circuit_that_closes_trusts_one_passed_probe_again() -> None:
    breaker = misled()
    breaker.probe_succeeded(T0 + 5, sent=T0 + 5, passing_since=T0 + 3)
    for at in (T0 + 5, T0 + 6, T0 + 7):
        trial, _ = breaker.allow("p", at)
        breaker.record(at + 0.5, False, "ok", trial)
    assert breaker.state is Circuit.CLOSED and not breaker.probes_misled
    closed = breaker.closed_at
    for _ in range(breaker.config.consecutive_failures):  # a new incident, past its probation
        breaker.record(closed + 61, True, "timeout")

    assert breaker.probe_succeeded(closed + 62, sent=closed + 62)[0].to_state is Circuit.HALF_OPEN


# --- probation -----------------------------------------------------------------------------------


def test_a_failure_on_probation_sends_it_back_to_half_open() -> None:
    breaker, closed = closed_after_trials()

    assert breaker.on_probation(closed + 59.9)
    moves = breaker.record(closed + 59.9, True, "server_error 500")

    assert moves == [Transition(Circuit.CLOSED, Circuit.HALF_OPEN, "a failure on probation (server_error 500)")]
    assert breaker.state is Circuit.HALF_OPEN


def test_probation_ends_after_probation_s() -> None:
    breaker, closed = closed_after_trials()

    assert not breaker.on_probation(closed + 60)
    assert breaker.record(closed + 60, True, "x") == []
    assert breaker.state is Circuit.CLOSED


def test_a_success_on_probation_keeps_it_closed() -> None:
    breaker, closed = closed_after_trials()

    assert breaker.record(closed + 1, False, "") == []
    assert breaker.state is Circuit.CLOSED


def test_a_relapse_on_probation_goes_on_doubling_the_cooldown() -> None:
    breaker, closed = closed_after_trials(HealthConfig(max_cooldown_s=40.0))
    breaker.record(closed + 1, True, "x")  # back to half-open
    permit, _ = breaker.allow("p", closed + 1)

    breaker.record(closed + 2, True, "x", permit)

    assert breaker.cooldown_s == 10.0  # from 5: the last incident's cooldown, doubled
    assert breaker.trips == 2


def test_a_trip_after_probation_starts_the_cooldown_afresh() -> None:
    breaker, closed = closed_after_trials(HealthConfig(max_cooldown_s=40.0))
    for _ in range(5):
        breaker.record(closed + 61, True, "x")

    assert breaker.state is Circuit.OPEN
    assert breaker.cooldown_s == 5.0
    assert breaker.trips == 1


def test_no_probation_before_the_first_close() -> None:
    breaker = Breaker(HealthConfig())

    assert not breaker.on_probation(T0)
    breaker.record(T0, True, "x")
    assert breaker.state is Circuit.CLOSED


def test_a_state_change_forgets_the_run_and_the_window() -> None:
    breaker, closed = closed_after_trials(HealthConfig(probation_s=0.0))

    assert (breaker.consecutive, len(breaker.recent), breaker.recent_failures) == (0, 0, 0)
    assert breaker.trials_passed == 0
    for _ in range(4):
        breaker.record(closed, True, "x")
    assert breaker.state is Circuit.CLOSED


def test_trials_still_out_when_the_circuit_moves_are_void() -> None:
    breaker = tripped(HealthConfig(trials_at_once=2))
    failing, _ = breaker.allow("p", T0 + 5)
    still_out, _ = breaker.allow("p", T0 + 5)

    breaker.record(T0 + 6, True, "x", failing)  # reopens: the other trial belongs to the period that ended

    assert still_out.void
    assert breaker.trials_out(T0 + 6) == 0


def test_after_a_close_a_success_ends_a_new_run_of_failures() -> None:
    breaker, closed = closed_after_trials(HealthConfig(probation_s=0.0))
    for failed in [True] * 4 + [False] + [True] * 4:
        permit, _ = breaker.allow("p", closed + 1)
        breaker.record(closed + 1, failed, "x", permit)

    assert breaker.state is Circuit.CLOSED
    assert breaker.consecutive == 4


def test_a_denied_permit_carries_its_period_and_time() -> None:
    breaker = tripped()

    denied, _ = breaker.allow("p", T0 + 1)

    assert not denied
    assert (denied.provider, denied.period, denied.issued, denied.trial) == ("p", 1, T0 + 1, False)


def test_a_probe_sent_before_the_circuit_opened_does_not_move_it() -> None:
    # It says nothing of the provider since the failures that opened the circuit.
    breaker = tripped()

    assert breaker.probe_succeeded(T0 + 1, sent=breaker.since - 0.5) == []
    assert breaker.state is Circuit.OPEN
    assert breaker.probe_succeeded(T0 + 1, sent=breaker.since)[0].to_state is Circuit.HALF_OPEN
