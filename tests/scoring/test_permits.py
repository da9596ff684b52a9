"""Each call carries its permit: outcomes are matched to the call's own permit, not counted."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.scoring import HealthConfig, HealthTracker, Permit
from app.telemetry import Telemetry
from tests.scoring.fake_clock import FakeClock


def trip(tracker: HealthTracker, provider: str = "a") -> None:
    for _ in range(tracker.config.consecutive_failures):
        tracker.record(provider, duration_s=0.2, status_code=500, permit=tracker.allow(provider))
    assert tracker.status(provider).circuit == "open"


def test_allow_returns_a_permit_truthy_when_the_call_may_go(tracker: HealthTracker, clock: FakeClock) -> None:
    permit = tracker.allow("a")
    assert isinstance(permit, Permit) and permit

    trip(tracker)

    assert not tracker.allow("a")


def test_calls_admitted_before_a_trip_are_not_trials(tracker: HealthTracker, clock: FakeClock) -> None:
    streams = [tracker.allow("a") for _ in range(5)]  # long streams, admitted while closed
    trip(tracker)
    clock.advance(tracker.config.open_cooldown_s)
    trial = tracker.allow("a")
    assert trial

    for stream in streams[:3]:  # they succeed late: no trial passed, the trial still out
        tracker.record("a", duration_s=60.0, permit=stream)
    for stream in streams[3:]:  # or fail late: the circuit does not reopen
        tracker.record("a", duration_s=60.0, status_code=500, permit=stream)

    assert tracker.status("a").reasons[0] == "circuit half-open: 1 trial call in flight, 0 of 3 passed"
    tracker.record("a", duration_s=0.3, permit=trial)  # the real trial result counts
    assert tracker.status("a").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_old_calls_never_reopen_a_circuit_closed_since(tracker: HealthTracker, clock: FakeClock) -> None:
    streams = [tracker.allow("a") for _ in range(10)]
    trip(tracker)
    clock.advance(tracker.config.open_cooldown_s)
    for _ in range(tracker.config.half_open_trials):
        tracker.record("a", duration_s=0.3, permit=tracker.allow("a"))
    assert tracker.status("a").circuit == "closed"

    for stream in streams:  # the streams of the old incident end, failed
        tracker.record("a", duration_s=90.0, status_code=503, permit=stream)

    assert tracker.status("a").circuit == "closed"


def test_a_permit_handed_back_twice_counts_once(tracker: HealthTracker, clock: FakeClock) -> None:
    trip(tracker)
    clock.advance(tracker.config.open_cooldown_s)
    trial = tracker.allow("a")

    for _ in range(tracker.config.half_open_trials):
        tracker.record("a", duration_s=0.3, permit=trial)

    health = tracker.status("a")
    assert health.circuit == "half_open"
    assert health.reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_records_without_a_permit_keep_working(tracker: HealthTracker, clock: FakeClock) -> None:
    for _ in range(5):
        tracker.record("a", duration_s=0.2, status_code=500)
    assert tracker.status("a").circuit == "open"
    clock.advance(tracker.config.open_cooldown_s)
    for _ in range(3):
        tracker.record("a", duration_s=0.2)

    assert tracker.status("a").circuit == "closed"


def test_a_trial_that_is_no_verdict_hands_its_permit_back(tracker: HealthTracker, clock: FakeClock) -> None:
    trip(tracker)
    clock.advance(tracker.config.open_cooldown_s)
    trial = tracker.allow("a")
    assert not tracker.allow("a")

    tracker.record("a", duration_s=0.1, status_code=429, retry_after_s=1, permit=trial)

    assert tracker.allow("a")


# --- the helpers ask for and return permits ---------------------------------------------------


@pytest.fixture
def telemetry(clock: FakeClock) -> Telemetry:
    """An app's telemetry, whose recording helpers feed a tracker on the fake clock."""
    return Telemetry(tracker=HealthTracker(clock=clock, wall_clock=clock.wall))


@pytest.fixture
def app_tracker(telemetry: Telemetry) -> HealthTracker:
    return telemetry.tracker


def test_track_model_inference_carries_the_permit_it_asked_for(
    app_tracker: HealthTracker, telemetry: Telemetry, clock: FakeClock
) -> None:
    with telemetry.track_model_inference("permit-a", "m") as stream:  # a long stream, admitted while closed
        trip(app_tracker, "permit-a")
        clock.advance(app_tracker.config.open_cooldown_s)
        with telemetry.track_model_inference("permit-a", "m"):  # the trial call
            assert not app_tracker.allow("permit-a")  # one trial at a time: it holds the permit
        stream.status_code = 500  # the old stream fails late: no trial, no reopening

    health = app_tracker.status("permit-a")
    assert health.circuit == "half_open"
    assert health.reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_track_model_inference_hands_back_the_gateways_permit(
    app_tracker: HealthTracker, telemetry: Telemetry, clock: FakeClock
) -> None:
    trip(app_tracker, "permit-b")
    clock.advance(app_tracker.config.open_cooldown_s)
    permit = app_tracker.allow("permit-b")

    with telemetry.track_model_inference("permit-b", "m", permit=permit):
        pass

    assert app_tracker.status("permit-b").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


def test_record_upstream_call_never_takes_the_place_of_a_trial_in_flight(
    app_tracker: HealthTracker, telemetry: Telemetry, clock: FakeClock
) -> None:
    trip(app_tracker, "permit-c")
    clock.advance(app_tracker.config.open_cooldown_s)
    trial = app_tracker.allow("permit-c")

    telemetry.record_upstream_call("permit-c", "m", duration_s=30.0, status_code=500)  # an old call ends

    assert app_tracker.status("permit-c").circuit == "half_open"
    telemetry.record_upstream_call("permit-c", "m", duration_s=0.3, status_code=200, permit=trial)
    assert app_tracker.status("permit-c").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


# --- properties over random interleavings -------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("allow"), st.just(0), st.just(0.0)),
    # hand back the call at this index (mod the calls out), with this status
    st.tuples(st.just("record"), st.sampled_from([200, 500, 503, 429, 404, "timeout"]), st.integers(0, 50)),
    st.tuples(st.just("again"), st.sampled_from([200, 500]), st.integers(0, 50)),  # a permit handed back twice
    st.tuples(st.just("advance"), st.just(0), st.floats(min_value=0.0, max_value=400.0)),
)


def _record(tracker: HealthTracker, permit: Permit, status: int | str) -> None:
    if status == "timeout":
        tracker.record("p", duration_s=10.0, error="timeout", permit=permit)
    else:
        tracker.record("p", duration_s=0.1, status_code=int(status), retry_after_s=1, permit=permit)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=3), st.lists(step, max_size=120))
@example(1, [("advance", 0, 5.0), ("allow", 0, 0.0), ("allow", 0, 0.0), ("record", 200, 3),
             ("again", 200, 0), ("allow", 0, 0.0), ("allow", 0, 0.0)])
def test_trial_permits_out_never_exceed_the_limit_and_none_counts_twice(
    at_once: int, steps: list[tuple[str, int | str, float]]
) -> None:
    # Starts just tripped, with three calls admitted before the trip still running.
    clock = FakeClock()
    config = HealthConfig(trials_at_once=at_once)
    current: list[tuple[Permit, float]] = []  # trial permits of the current half-open period

    def moved(*_: str) -> None:
        current.clear()  # a new period: the trials of the last one are no longer trials

    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    tracker.add_listener(moved)
    out: list[Permit] = [tracker.allow("p") for _ in range(3)]
    trip(tracker, "p")
    done: list[Permit] = []

    for action, status, amount in steps:
        if action == "allow":
            permit = tracker.allow("p")
            if permit:
                out.append(permit)
            if permit.trial:
                current.append((permit, clock.now))
        elif action == "record" and out:
            permit = out.pop(int(amount) % len(out))
            _record(tracker, permit, status)
            current[:] = [(p, at) for p, at in current if p is not permit]
            done.append(permit)
        elif action == "again" and done:
            before = tracker.status("p")
            _record(tracker, done[int(amount) % len(done)], status)
            assert tracker.status("p") == before  # a second return changes nothing
        elif action == "advance":
            clock.advance(float(amount))
        live = sum(1 for _, at in current if clock.now < at + config.trial_timeout_s)
        assert live <= at_once
        health = tracker.status("p")
        if health.circuit == "half_open":
            assert health.reasons[0].startswith(f"circuit half-open: {live} trial call")
