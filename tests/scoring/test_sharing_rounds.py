"""Sharing: the rounds that publish a tracker's outcomes on its channels and replay the
others' (app.scoring.sharing), with channels made by hand and rounds driven by sync_once.

Contract: every outcome is handed to each channel once (a channel keeps what it fails to
send); a channel with a cadence of its own gets the outcomes batched until its turn; what
comes back is applied in the order it happened; a failing channel is counted and reported
and leaves the others working; start installs the gate and starts a daemon thread, stop
publishes what is left and closes the channels and the gate.
"""

from __future__ import annotations

import threading

import pytest

import app.scoring.sharing as sharing_module
from app.scoring import HealthTracker
from app.scoring.events import CALL, SharedOutcome
from app.scoring.sharing import ChannelStatus, Sharing
from tests.scoring.fake_clock import FakeClock


class Channel:
    """A channel that records what it is given and hands back what a test puts in it."""

    def __init__(self, name: str = "test", interval_s: float | None = None) -> None:
        self.name = name
        if interval_s is not None:
            self.interval_s = interval_s
        self.published: list[list[SharedOutcome]] = []
        self.inbox: list[SharedOutcome] = []
        self.fail_with: BaseException | None = None
        self.fail_receive = False
        self.closed = 0

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.append(list(outcomes))

    def receive(self) -> list[SharedOutcome]:
        if self.fail_receive:
            raise ConnectionError("gone")
        got, self.inbox = self.inbox, []
        return got

    def close(self) -> None:
        self.closed += 1


class Gate:
    def __init__(self) -> None:
        self.closed = 0

    def acquire(self, provider: str, issued: float, deadline: float, limit: int) -> bool:
        return True

    def release(self, provider: str, issued: float) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def failure(at: float, provider: str = "p") -> SharedOutcome:
    return SharedOutcome(CALL, provider, "failure", at, at, duration_s=0.1, latency_s=0.1, what="failure 500")


@pytest.fixture
def tracker(clock: FakeClock) -> HealthTracker:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    tracker.share_outcomes()
    return tracker


def test_a_round_publishes_the_new_outcomes_on_every_channel_once(tracker: HealthTracker, clock: FakeClock) -> None:
    first, second = Channel("one"), Channel("two")
    sharing = Sharing(tracker, [first, second], clock=clock)
    tracker.record("p", duration_s=0.5)

    assert sharing.sync_once() == 0
    sharing.sync_once()

    assert [[item.outcome for item in batch] for batch in first.published] == [["success"], []]
    assert first.published == second.published
    assert sharing.channels == [first, second]


def test_a_round_applies_what_came_back_in_the_order_it_happened(tracker: HealthTracker, clock: FakeClock) -> None:
    first, second = Channel("one"), Channel("two")
    sharing = Sharing(tracker, [first, second], clock=clock)
    heard: list[tuple[str, str]] = []
    tracker.add_listener(lambda provider, old, new, reason: heard.append((old, new)))
    # Four failures at 1000 from one, the fifth (earlier) from the other: sorted, they trip it.
    first.inbox = [failure(1000.0 + step) for step in (1, 2, 3, 4)]
    second.inbox = [failure(1000.0)]

    assert sharing.sync_once() == 5

    health = tracker.status("p")
    assert (health.calls, health.circuit) == (5, "open")
    assert heard == [("closed", "open")]
    assert tracker.take_outcomes() == []  # not passed on again


def test_a_channel_with_a_cadence_gets_the_outcomes_batched_until_its_turn(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    slow, fast = Channel("slow", interval_s=1.0), Channel("fast")
    sharing = Sharing(tracker, [slow, fast], clock=clock)
    for _ in range(4):  # rounds at 1000, 1000.5, 1001, 1001.5
        tracker.record("p", duration_s=0.5)
        slow.inbox.append(failure(clock()))
        sharing.sync_once()
        clock.advance(0.5)

    assert [len(batch) for batch in slow.published] == [1, 2]  # at 1000, and at 1001 with 1000.5's
    assert [len(batch) for batch in fast.published] == [1, 1, 1, 1]
    status = {entry.name: entry for entry in sharing.status()}
    assert status["slow"].pending == 1  # 1001.5's waits for 1002
    assert status["fast"].pending == 0
    # Its own four, and the three the slow channel brought at its turns (1000; 1000.5 and 1001).
    assert tracker.status("p").calls == 4 + 3

    assert sharing.sync_once(force=True) == 1  # forced: every channel now, and 1001.5's comes in
    assert [len(batch) for batch in slow.published] == [1, 2, 1]


def test_a_failing_channel_is_counted_reported_and_told_to_the_error_hook(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    broken, working = Channel("broken"), Channel("working")
    broken.fail_with = OSError("disk full")
    errors: list[tuple[str, str]] = []
    sharing = Sharing(tracker, [broken, working], clock=clock,
                      on_error=lambda name, error: errors.append((name, str(error))))
    tracker.record("p", duration_s=0.5)
    working.inbox = [failure(clock(), "q")]

    assert sharing.sync_once() == 1  # what the working one brought

    assert errors == [("broken", "disk full")]
    broken_status, working_status = sharing.status()
    assert broken_status == ChannelStatus(
        name="broken", ok=False, last_error="OSError: disk full", last_error_at=broken_status.last_error_at,
        errors=1, sent=0, received=0, garbage=0, dropped=0, pending=0)
    assert broken_status.last_error_at is not None and broken_status.last_error_at > 1_700_000_000
    assert working_status == ChannelStatus(name="working", ok=True, last_error=None, last_error_at=None, errors=0,
                                           sent=1, received=1, garbage=0, dropped=0, pending=0)

    broken.fail_with = None
    sharing.sync_once()
    recovered = sharing.status()[0]
    assert (recovered.ok, recovered.errors, recovered.last_error) == (True, 1, "OSError: disk full")


def test_a_channel_failing_to_receive_counts_as_a_failed_round(tracker: HealthTracker, clock: FakeClock) -> None:
    channel = Channel()
    channel.fail_receive = True
    sharing = Sharing(tracker, [channel], clock=clock)
    tracker.record("p", duration_s=0.5)

    assert sharing.sync_once() == 0

    status = sharing.status()[0]
    assert (status.ok, status.errors, status.sent, status.last_error) == (False, 1, 1, "ConnectionError: gone")


def test_an_error_hook_that_raises_is_ignored(tracker: HealthTracker, clock: FakeClock) -> None:
    channel = Channel()
    channel.fail_with = OSError("down")

    def broken_hook(name: str, error: BaseException) -> None:
        raise RuntimeError("a broken hook")

    sharing = Sharing(tracker, [channel], clock=clock, on_error=broken_hook)

    assert sharing.sync_once() == 0
    assert sharing.status()[0].errors == 1


def test_status_reads_the_channels_own_counters_when_it_keeps_them(tracker: HealthTracker, clock: FakeClock) -> None:
    channel = Channel()
    channel.sent, channel.garbage, channel.dropped = 40, 3, 2  # type: ignore[attr-defined]
    sharing = Sharing(tracker, [channel], clock=clock)
    tracker.record("p", duration_s=0.5)
    sharing.sync_once()

    status = sharing.status()[0]

    assert (status.sent, status.garbage, status.dropped) == (40, 3, 2)


def test_at_most_max_pending_outcomes_wait_for_a_channel_the_oldest_dropped(
    tracker: HealthTracker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing_module, "MAX_PENDING", 3)
    slow = Channel("slow", interval_s=60.0)
    sharing = Sharing(tracker, [slow], clock=clock)
    sharing.sync_once()  # its first turn, then none for 60 s
    for step in range(5):
        tracker.record(f"p{step}", duration_s=0.5)
        sharing.sync_once()

    assert sharing.status()[0].pending == 3
    sharing.sync_once(force=True)
    assert [item.provider for item in slow.published[-1]] == ["p2", "p3", "p4"]


def test_max_pending_holds_a_hundred_thousand_outcomes() -> None:
    assert sharing_module.MAX_PENDING == 100_000


def test_start_shares_installs_the_gate_and_stop_undoes_it(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    channel, gate = Channel(), Gate()
    sharing = Sharing(tracker, [channel], gate=gate, interval_s=60.0, clock=clock)
    before = [thread for thread in threading.enumerate() if thread.name == "health-sharing"]

    sharing.start()
    sharing.start()  # started already: one thread
    threads = [thread for thread in threading.enumerate() if thread.name == "health-sharing"]
    tracker.record("p", duration_s=0.5)
    assert tracker.trial_gate is gate
    assert len(threads) == len(before) + 1 and all(thread.daemon for thread in threads)

    sharing.stop()

    assert [thread for thread in threading.enumerate() if thread.name == "health-sharing"] == before
    assert tracker.trial_gate is None
    assert [[item.provider for item in batch] for batch in channel.published] == [["p"]]  # what was left
    assert (channel.closed, gate.closed) == (1, 1)


def test_stop_leaves_a_gate_installed_by_someone_else(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    ours, theirs = Gate(), Gate()
    sharing = Sharing(tracker, [Channel()], gate=ours, interval_s=60.0, clock=clock)
    sharing.start()
    tracker.trial_gate = theirs

    sharing.stop()

    assert tracker.trial_gate is theirs


def test_stop_without_start_publishes_and_closes(tracker: HealthTracker, clock: FakeClock) -> None:
    channel = Channel()
    sharing = Sharing(tracker, [channel], clock=clock)
    tracker.record("p", duration_s=0.5)

    sharing.stop()

    assert [len(batch) for batch in channel.published] == [1]
    assert channel.closed == 1


def test_stop_closes_every_channel_even_when_one_fails_to_close(tracker: HealthTracker, clock: FakeClock) -> None:
    class BrokenClose(Channel):
        def close(self) -> None:
            raise OSError("cannot close")

    broken, channel = BrokenClose("broken"), Channel()
    sharing = Sharing(tracker, [broken, channel], clock=clock)

    sharing.stop()

    assert channel.closed == 1


def test_the_thread_counts_a_round_that_raises_and_goes_on(tracker: HealthTracker) -> None:
    applied = threading.Event()
    calls = 0
    real_apply = tracker.apply

    def apply_failing_once(outcomes: list[SharedOutcome]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("a bad round")
        real_apply(outcomes)
        applied.set()

    tracker.apply = apply_failing_once  # type: ignore[method-assign]

    class Refill(Channel):
        def receive(self) -> list[SharedOutcome]:
            return [failure(1000.0, "q")]

    sharing = Sharing(tracker, [Refill()], interval_s=0.001)
    sharing.start()
    try:
        assert applied.wait(5.0)
    finally:
        sharing.stop()

    # The first two rounds raised and were counted; the thread went on to apply the next.
    assert sharing.failed_rounds == 2


def test_the_default_round_is_every_25_ms(tracker: HealthTracker) -> None:
    assert Sharing(tracker, []).interval_s == 0.025


def test_sent_and_errors_add_up_over_rounds(tracker: HealthTracker, clock: FakeClock) -> None:
    working, broken = Channel("working"), Channel("broken")
    broken.fail_with = OSError("down")
    sharing = Sharing(tracker, [working, broken], clock=clock)
    assert sharing.failed_rounds == 0
    for _ in range(2):
        tracker.record("p", duration_s=0.5)
        sharing.sync_once()

    working_status, broken_status = sharing.status()

    assert (working_status.sent, broken_status.errors) == (2, 2)


def test_stop_hands_what_is_left_even_to_a_channel_not_due(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    slow = Channel("slow", interval_s=60.0)
    sharing = Sharing(tracker, [slow], clock=clock)
    tracker.share_outcomes()
    sharing.sync_once()  # its turn now, the next in 60 s
    tracker.record("p", duration_s=0.5)

    sharing.stop()

    assert [[item.provider for item in batch] for batch in slow.published] == [[], ["p"]]


def test_stop_survives_a_gate_that_fails_to_close(tracker: HealthTracker, clock: FakeClock) -> None:
    class BrokenGate(Gate):
        def close(self) -> None:
            raise OSError("cannot close")

    channel = Channel()
    sharing = Sharing(tracker, [channel], gate=BrokenGate(), clock=clock)

    sharing.stop()

    assert channel.closed == 1


def test_what_several_channels_bring_is_applied_in_the_order_it_happened(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    channel = Channel()
    sharing = Sharing(tracker, [channel], clock=clock)
    channel.inbox = [failure(1000.0 + step) for step in range(4)]
    sharing.sync_once()
    success = SharedOutcome(CALL, "p", "success", 1004.0, 1004.0, duration_s=0.5, latency_s=0.5)
    channel.inbox = [failure(1005.0), success]  # handed over out of order

    sharing.sync_once()

    # In order: four failures, a success that ends the run, one failure: no trip.
    assert tracker.status("p").circuit == "closed"
    assert sharing.status()[0].received == 6
