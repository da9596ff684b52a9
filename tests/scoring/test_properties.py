"""Properties that hold for any input: the score's range and monotony, choose's answers,
and the half-open breaker's limit on trial calls under random interleavings."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.scoring import HealthTracker, Permit, apdex, health_score
from tests.scoring.fake_clock import FakeClock

unit = st.floats(min_value=0.0, max_value=1.0)
anything = st.floats(allow_nan=False, allow_infinity=True)


@st.composite
def weights(draw: st.DrawFn) -> tuple[float, float, float]:
    raw = draw(st.tuples(*[st.integers(min_value=0, max_value=100)] * 3).filter(lambda w: sum(w) > 0))
    total = sum(raw)
    return (raw[0] / total, raw[1] / total, raw[2] / total)


@given(anything, anything, anything, weights())
def test_score_is_in_0_1_whatever_the_components(a: float, e: float, latency: float,
                                                 w: tuple[float, float, float]) -> None:
    assert 0.0 <= health_score(a, e, latency, w) <= 1.0


@given(unit, unit, unit, unit, weights())
def test_score_grows_with_availability(a1: float, a2: float, e: float, latency: float,
                                       w: tuple[float, float, float]) -> None:
    low, high = sorted((a1, a2))
    assert health_score(low, e, latency, w) <= health_score(high, e, latency, w) + 1e-12


@given(unit, unit, unit, unit, weights())
def test_score_falls_as_the_error_rate_rises(a: float, e1: float, e2: float, latency: float,
                                             w: tuple[float, float, float]) -> None:
    low, high = sorted((e1, e2))
    assert health_score(a, high, latency, w) <= health_score(a, low, latency, w) + 1e-12


@given(unit, unit, unit, unit, weights())
def test_score_grows_with_the_latency_score(a: float, e: float, l1: float, l2: float,
                                            w: tuple[float, float, float]) -> None:
    low, high = sorted((l1, l2))
    assert health_score(a, e, low, w) <= health_score(a, e, high, w) + 1e-12


durations = st.lists(st.one_of(st.floats(min_value=0.0, max_value=100.0), st.just(math.inf)), max_size=50)


@given(durations, st.floats(min_value=0.01, max_value=10.0))
def test_apdex_is_in_0_1(samples: list[float], threshold: float) -> None:
    assert 0.0 <= apdex(samples, threshold) <= 1.0


@given(durations.filter(bool), st.data(), st.floats(min_value=0.01, max_value=10.0))
def test_a_faster_call_never_lowers_apdex(samples: list[float], data: st.DataObject, threshold: float) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(samples) - 1))
    faster = list(samples)
    faster[index] = data.draw(st.floats(min_value=0.0, max_value=min(samples[index], 1e6)))
    assert apdex(faster, threshold) >= apdex(samples, threshold)


# --- the tracker under random traffic --------------------------------------------------------

NAMES = ["a", "b", "c", "d", "e"]

call = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from([None, 200, 400, 401, 404, 429, 500, 503, 529]),
    st.sampled_from([None, "timeout", "stream_broken"]),
    st.sampled_from([None, "insufficient_quota"]),
    st.floats(min_value=0.0, max_value=40.0),
    st.floats(min_value=0.0, max_value=20.0),  # seconds to the next call
)


def replay(tracker: HealthTracker, clock: FakeClock, calls: list[tuple]) -> None:
    for name, status_code, error, error_code, duration, gap in calls:
        if tracker.allow(name):
            tracker.start(name)
            tracker.record(name, duration_s=duration, status_code=status_code, error=error,
                           error_code=error_code, retry_after_s=duration if status_code == 429 else None)
        clock.advance(gap)


@settings(max_examples=150, deadline=None)
@given(st.lists(call, max_size=60))
def test_tracker_scores_stay_in_0_1(calls: list[tuple]) -> None:
    clock = FakeClock()
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    replay(tracker, clock, calls)

    for health in tracker.snapshot():
        for value in (health.score, health.availability, health.error_rate, health.latency_score):
            assert 0.0 <= value <= 1.0


@settings(max_examples=150, deadline=None)
@given(st.lists(call, max_size=60), st.lists(st.sampled_from(NAMES), min_size=1, max_size=8))
def test_choose_answers_only_with_its_candidates(calls: list[tuple], candidates: list[str]) -> None:
    clock = FakeClock()
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    replay(tracker, clock, calls)

    choice = tracker.choose(candidates)

    assert choice.provider in candidates
    assert choice.provider == choice.order[0]
    assert sorted(choice.order) == sorted(set(candidates))
    assert len(choice.order) == len(set(candidates))


# --- half-open: never more than trials_at_once trial calls at once, each call with its permit ---

step = st.one_of(
    st.tuples(st.just("allow"), st.just(0), st.just(0.0)),
    st.tuples(st.just("finish"), st.sampled_from([None, 500, 503, 429, 404]), st.integers(0, 20)),
    st.tuples(st.just("advance"), st.just(0), st.floats(min_value=0.0, max_value=45.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4), st.lists(step, max_size=80))
@example(0, [("advance", 0, 30.0), *[("allow", 0, 0.0)] * 3, ("finish", 500, 0),  # a trial fails: open
             ("advance", 0, 45.0), ("advance", 0, 15.0), *[("allow", 0, 0.0)] * 3,  # three new trials
             ("finish", 429, 0), ("allow", 0, 0.0)])  # an old trial ends late; no fourth permit
def test_half_open_never_lets_more_than_the_trial_calls_through_at_once(
    calls_in_flight: int, steps: list[tuple[str, int | None, float]]
) -> None:
    clock = FakeClock()
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    limit = tracker.config.trials_at_once
    # (half-open episode, allowed as a trial call, the call's own permit)
    outstanding: list[tuple[int, bool, Permit]] = []
    for _ in range(calls_in_flight):  # calls that began while the circuit was closed
        permit = tracker.allow("p")
        assert permit
        outstanding.append((0, False, permit))
    for _ in range(tracker.config.consecutive_failures):  # every call asks allow() first
        assert tracker.allow("p")
        tracker.record("p", duration_s=0.1, status_code=500)
    circuit, episode = tracker.status("p").circuit, 0

    for action, status_code, amount in steps:
        if action == "allow":
            permit = tracker.allow("p")
            if permit:
                outstanding.append((episode, circuit == "half_open", permit))
        elif action == "finish" and outstanding:
            *_, permit = outstanding.pop(int(amount) % len(outstanding))
            tracker.record("p", duration_s=0.1, status_code=status_code, retry_after_s=1, permit=permit)
        elif action == "advance":
            clock.advance(amount)
        now = tracker.status("p").circuit
        if now == "half_open" and circuit != "half_open":
            episode += 1  # trial permits belong to one half-open period
        circuit = now
        if circuit == "half_open":
            assert sum(1 for era, trial, _ in outstanding if trial and era == episode) <= limit
