"""``allow`` and ``begin`` grant a closed circuit's permit without the breaker's
calls: the permits, the states and the load they leave must be the breaker's own, and the
calls in flight exact however threads interleave."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.scoring import HealthTracker, Permit
from app.telemetry import Telemetry
from tests.scoring.fake_clock import FakeClock


class ThroughTheBreaker(HealthTracker):
    """The oracle, for one thread: every permit from the provider's ``Breaker.allow``
    itself, its moves handed to ``moved`` here; none of the tracker's own steps."""

    def __init__(self, moved: Callable[..., None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.moved = moved
        self.add_listener(moved)  # the moves record() makes

    def allow(self, provider: str) -> Permit:
        now = self.clock()
        state = self._providers.get(provider)
        if state is None:  # never seen: closed, and no state until a call is recorded
            return Permit(provider, True, 0, now)
        permit, moves = state.breaker.allow(provider, now)
        if permit:
            state.last_granted = now
        for move in moves:
            self.moved(provider, move.from_state.value, move.to_state.value, move.reason)
        return permit

    def begin(self, provider: str) -> Permit:
        if provider in self._providers:
            self._providers[provider].in_flight += 1
        else:
            self.start(provider)  # a new provider, closed: its first call in flight
        return self.allow(provider)


step = st.one_of(
    st.tuples(st.sampled_from(["allow", "begin"]), st.just(0), st.just(0.0)),
    # hand back the call at this index (mod the calls out) with this status, or with no permit
    st.tuples(st.sampled_from(["record", "unasked"]), st.sampled_from([200, 500, 503, 429, 404]),
              st.integers(0, 50)),
    st.tuples(st.just("advance"), st.just(0), st.floats(min_value=0.0, max_value=200.0)),
)


def _shape(permit: Permit) -> tuple[object, ...]:
    return (permit.provider, permit.granted, permit.period, permit.issued, permit.trial, permit.deadline,
            permit.void)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=120))
@example([*[("begin", 0, 0.0), ("record", 500, 0)] * 5, ("advance", 0, 30.0),  # trip, cool down
          ("begin", 0, 0.0), ("allow", 0, 0.0), ("record", 200, 0),  # a trial out, a call refused
          *[("begin", 0, 0.0), ("record", 200, -1)] * 2,  # the trials close it: a new period
          ("begin", 0, 0.0), ("allow", 0, 0.0), ("unasked", 500, 0), ("record", 503, 1)])
def test_the_fast_path_grants_what_the_breaker_grants(steps: list[tuple[str, int, float]]) -> None:
    clocks = FakeClock(), FakeClock()
    moves: tuple[list[tuple[str, ...]], list[tuple[str, ...]]] = ([], [])
    fast = HealthTracker(clock=clocks[0], wall_clock=clocks[0].wall)
    fast.add_listener(lambda *m: moves[0].append(m))
    oracle = ThroughTheBreaker(lambda *m: moves[1].append(m), clock=clocks[1], wall_clock=clocks[1].wall)
    out: tuple[list[Permit], list[Permit]] = ([], [])

    for action, status, amount in steps:
        for tracker, clock, calls in zip((fast, oracle), clocks, out, strict=True):
            if action in ("allow", "begin"):
                calls.append(getattr(tracker, action)("p"))
            elif action == "record" and calls:
                permit = calls.pop(int(amount) % len(calls))
                tracker.record("p", duration_s=0.1, status_code=status, retry_after_s=1, permit=permit)
            elif action == "unasked":
                tracker.record("p", duration_s=0.1, status_code=status, retry_after_s=1)
            elif action == "advance":
                clock.advance(amount)
        assert [_shape(p) for p in out[0]] == [_shape(p) for p in out[1]]
        assert fast.status("p") == oracle.status("p")
        if "p" in oracle._providers:  # when a call last went: choose() retries idle providers by it
            assert fast._providers["p"].last_granted == oracle._providers["p"].last_granted
        assert moves[0] == moves[1]


def test_a_closed_circuits_permit_is_good_for_its_period_only(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    streams = [tracker.begin("p") for _ in range(tracker.config.consecutive_failures)]
    assert all(stream and not stream.trial and stream.period == 0 for stream in streams)
    for _ in range(tracker.config.consecutive_failures):
        tracker.record("p", duration_s=0.1, status_code=500, permit=tracker.begin("p"))
    clock.advance(tracker.config.open_cooldown_s)
    for _ in range(tracker.config.half_open_trials):
        tracker.record("p", duration_s=0.1, permit=tracker.begin("p"))

    clock.advance(tracker.config.probation_s)  # off probation: it takes a full run to trip
    again = tracker.begin("p")
    assert again and not again.trial and again.period == 3  # closed -> open -> half-open -> closed
    assert tracker.allow("p").period == 3
    for stream in streams:  # the streams of the incident fail late: no verdict
        tracker.record("p", duration_s=90.0, status_code=500, permit=stream)
    assert tracker.status("p").circuit == "closed"
    assert tracker.status("p").in_flight == 1  # ``again`` still runs
    tracker.record("p", duration_s=0.1, status_code=500, permit=again)  # a call of this period counts:
    for _ in range(tracker.config.consecutive_failures - 2):
        tracker.record("p", duration_s=0.1, status_code=500, permit=tracker.begin("p"))
    assert tracker.status("p").circuit == "closed"
    tracker.record("p", duration_s=0.1, status_code=500, permit=tracker.begin("p"))  # with it, a full run
    assert tracker.status("p").circuit == "open"
    assert tracker.status("p").in_flight == 0


# --- threads -------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond, so a count that is not atomic loses updates."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


THREADS, CALLS = 4, 10_000


def _run(target: Callable[[], None]) -> None:
    """``target`` in THREADS threads that start together, so their calls interleave."""
    barrier = threading.Barrier(THREADS)

    def together() -> None:
        barrier.wait(timeout=30)
        target()

    threads = [threading.Thread(target=together) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)


def test_calls_in_flight_stay_exact_under_threads(fast_switching: None) -> None:
    tracker = HealthTracker()
    held: list[Permit] = []
    lock = threading.Lock()

    def begin() -> None:
        mine = [tracker.begin("p") for _ in range(CALLS)]
        with lock:
            held.extend(mine)

    _run(begin)
    assert len(held) == THREADS * CALLS and all(held)
    assert tracker.status("p").in_flight == THREADS * CALLS

    def end_and_begin() -> None:  # each ends two calls and begins one
        for _ in range(CALLS // 2):
            with lock:
                ended = held.pop(), held.pop()
            for permit in ended:
                tracker.record("p", duration_s=0.01, permit=permit)
            permit = tracker.begin("p")
            with lock:
                held.append(permit)

    _run(end_and_begin)
    assert tracker.status("p").in_flight == len(held) == THREADS * CALLS // 2
    for permit in held:
        tracker.record("p", duration_s=0.01, permit=permit)
    assert tracker.status("p").in_flight == 0


def test_the_helper_leaves_no_call_in_flight_under_threads(fast_switching: None) -> None:
    telemetry = Telemetry()
    tracker = telemetry.tracker

    def calls() -> None:
        for _ in range(CALLS // 4):
            with telemetry.track_model_inference("fast-path-threads", "m"):
                pass

    _run(calls)
    health = tracker.status("fast-path-threads")
    assert health.in_flight == 0
    assert health.calls == THREADS * CALLS // 4
