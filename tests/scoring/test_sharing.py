"""Processes of one host acting as one breaker (app.scoring.sharing), in one process.

Two trackers stand for two workers: each has its own HostChannel (distinct pids) and its
own FileTrialGate on one directory, and both run on one fake clock (the host's monotonic
clock is one for every process). A round of sharing is driven by ``sync_once``: no thread,
no sleep.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.scoring import Circuit, HealthConfig, HealthTracker, Permit
from app.scoring.events import CALL, SharedOutcome, encode
from app.scoring.sharing import FileTrialGate, HostChannel, Sharing
from tests.scoring.fake_clock import FakeClock

PROVIDER = "openrouter"


@dataclass
class Worker:
    tracker: HealthTracker
    channel: HostChannel
    gate: FileTrialGate
    sharing: Sharing

    def sync(self) -> int:
        return self.sharing.sync_once()

    def fail(self, times: int, provider: str = PROVIDER) -> None:
        for _ in range(times):
            permit = self.tracker.allow(provider)
            self.tracker.record(provider, duration_s=0.2, status_code=503, permit=permit)


def worker(directory: Path, clock: FakeClock, pid: int, config: HealthConfig | None = None) -> Worker:
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    channel = HostChannel(str(directory), pid=pid, clock=clock, horizon_s=tracker.config.window_s)
    gate = FileTrialGate(str(directory), pid=pid)
    tracker.share_outcomes()
    tracker.trial_gate = gate
    return Worker(tracker, channel, gate, Sharing(tracker, [channel], gate=gate))


CONFIG = HealthConfig(trials_at_once=2, open_cooldown_s=5.0, max_cooldown_s=10.0, trial_timeout_s=30.0)


@pytest.fixture
def pair(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Worker, Worker]]:
    a, b = worker(tmp_path, clock, 101, CONFIG), worker(tmp_path, clock, 102, CONFIG)
    try:
        yield a, b
    finally:
        for each in (a, b):
            each.channel.close()
            each.gate.close()


def sync(*workers: Worker) -> None:
    """A round in each: whatever one published, the others have read by the end."""
    for each in workers:
        each.sync()
    for each in workers:
        each.sync()


def test_a_trip_in_one_process_refuses_calls_in_the_other_after_one_round(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    a.fail(CONFIG.consecutive_failures)
    assert not a.tracker.allow(PROVIDER)
    assert b.tracker.allow(PROVIDER)  # nothing shared yet
    a.sync()  # publishes
    assert b.sync() == CONFIG.consecutive_failures  # receives and applies
    assert not b.tracker.allow(PROVIDER)
    health = b.tracker.status(PROVIDER)
    assert health.circuit is Circuit.OPEN and health.calls == CONFIG.consecutive_failures
    # What B replayed is not passed on again: A hears nothing back.
    b.sync()
    assert a.sync() == 0
    assert a.tracker.status(PROVIDER).calls == CONFIG.consecutive_failures


def test_a_429_with_retry_after_in_one_keeps_the_other_off(pair: tuple[Worker, Worker], clock: FakeClock) -> None:
    a, b = pair
    a.tracker.record(PROVIDER, duration_s=0.1, status_code=429, headers={"Retry-After": "30"})
    sync(a, b)
    choice = b.tracker.choose([PROVIDER, "anthropic"])
    assert choice.provider == "anthropic" and not choice.panic
    until = b.tracker.status(PROVIDER).rate_limited_until
    assert until is not None and until.timestamp() == pytest.approx(clock.wall() + 30, abs=0.01)
    clock.advance(31)
    assert b.tracker.choose([PROVIDER, "anthropic"]).order[0] == PROVIDER  # both unknown: input order


def test_after_the_cooldown_exactly_trials_at_once_permits_are_out_across_both(
    pair: tuple[Worker, Worker], clock: FakeClock
) -> None:
    a, b = pair
    a.fail(CONFIG.consecutive_failures)
    sync(a, b)
    clock.advance(CONFIG.open_cooldown_s)
    permits = [w.tracker.allow(PROVIDER) for _ in range(3) for w in (a, b)]
    granted = [p for p in permits if p]
    assert len(granted) == CONFIG.trials_at_once
    assert all(p.trial for p in granted)
    assert a.gate.held(PROVIDER, clock()) == CONFIG.trials_at_once
    # Without the gate each would have let trials_at_once through: the gate is what counts.
    holder = a if permits[0] else b
    trial = next(p for p in permits if p)
    clock.advance(1)
    holder.tracker.record(PROVIDER, duration_s=0.2, status_code=200, permit=trial)  # passes: slot back
    sync(a, b)
    other = b if holder is a else a
    assert other.tracker.allow(PROVIDER).trial  # the freed place, taken by the other process
    assert not a.tracker.allow(PROVIDER) and not b.tracker.allow(PROVIDER)


def test_an_expired_trial_slot_frees_its_place(tmp_path: Path, clock: FakeClock) -> None:
    config = HealthConfig(trials_at_once=1, open_cooldown_s=5.0, trial_timeout_s=30.0)
    a, b = worker(tmp_path, clock, 101, config), worker(tmp_path, clock, 102, config)
    a.fail(config.consecutive_failures)
    sync(a, b)
    clock.advance(config.open_cooldown_s)
    lost = a.tracker.allow(PROVIDER)
    assert lost.trial  # never handed back
    clock.advance(config.trial_timeout_s - 1)
    assert not b.tracker.allow(PROVIDER)
    clock.advance(1)  # its deadline
    assert b.tracker.allow(PROVIDER).trial
    assert b.gate.reaped == 0  # freed by its deadline, its holder being alive


def test_a_slot_whose_holder_is_gone_frees_at_once(tmp_path: Path, clock: FakeClock) -> None:
    config = HealthConfig(trials_at_once=1, open_cooldown_s=5.0, trial_timeout_s=300.0)
    a, b = worker(tmp_path, clock, 101, config), worker(tmp_path, clock, 102, config)
    a.fail(config.consecutive_failures)
    sync(a, b)
    clock.advance(config.open_cooldown_s)
    assert a.tracker.allow(PROVIDER).trial
    assert not b.tracker.allow(PROVIDER)
    a.gate.close()  # as a process killed holding it: its owner file is no longer locked
    assert b.tracker.allow(PROVIDER).trial
    assert b.gate.reaped == 1


def test_the_gate_refuses_at_once_while_another_process_holds_its_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    other = os.open(gate.path(PROVIDER), os.O_RDWR | os.O_CREAT)
    # "At once": one try, no sleep before another (a blocking flock would never return).
    slept: list[float] = []
    monkeypatch.setattr("app.scoring.sharing.time.sleep", slept.append)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another open file: as another process
        assert not gate.acquire(PROVIDER, 10.0, 20.0, 1)
        assert slept == []
        assert gate.busy == 1
        fcntl.flock(other, fcntl.LOCK_UN)
        assert gate.acquire(PROVIDER, 10.0, 20.0, 1)
        assert not gate.acquire(PROVIDER, 11.0, 21.0, 1)
        fcntl.flock(other, fcntl.LOCK_EX)
        gate.release(PROVIDER, 10.0)  # busy through its retries: the slot stays until its deadline
        fcntl.flock(other, fcntl.LOCK_UN)
        assert gate.held(PROVIDER, 15.0) == 1 and gate.held(PROVIDER, 20.0) == 0
        gate.release(PROVIDER, 10.0)
        assert gate.held(PROVIDER, 15.0) == 0
    finally:
        os.close(other)
        gate.close()


def _record(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def _outcome(at: float, provider: str = PROVIDER, outcome: str = "server_error") -> SharedOutcome:
    return SharedOutcome(CALL, provider, outcome, at, at, duration_s=0.1, latency_s=0.1, what="503")


def test_a_corrupt_record_is_skipped_and_counted_and_a_half_written_one_waits(tmp_path: Path,
                                                                            clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    path = tmp_path / "health" / "outcomes-2-cafe0000-000001.bin"
    good = _record(encode([_outcome(clock())]))
    path.write_bytes(_record(b"\x09not outcomes") + good + good[:7])
    assert reader.receive() == [_outcome(clock())]
    assert reader.garbage == 1 and "version 9" in reader.last_garbage
    assert reader.receive() == []  # the half-written record waits
    with path.open("ab") as file:
        file.write(good[7:])
    assert reader.receive() == [_outcome(clock())]
    with path.open("ab") as file:  # a length no record has: the rest of the file is garbage
        file.write(struct.pack("<I", 2**31) + b"x" * 100)
    assert reader.receive() == []
    assert reader.garbage == 2
    with path.open("ab") as file:
        file.write(good)
    assert reader.receive() == [_outcome(clock())]  # the garbage was skipped, not waited for
    path.unlink()
    assert reader.receive() == [] and not reader._readers  # a vanished file is forgotten
    reader.close()


def test_sharing_reports_a_corrupt_record_as_garbage(pair: tuple[Worker, Worker], tmp_path: Path) -> None:
    a, b = pair
    (tmp_path / "health" / "outcomes-9-00000000-000001.bin").write_bytes(_record(b"garbage"))
    b.sync()
    assert [(s.name, s.ok, s.garbage) for s in b.sharing.status()] == [("host", True, 1)]


def test_a_late_starter_learns_the_last_window_and_nothing_older(tmp_path: Path, clock: FakeClock) -> None:
    a = worker(tmp_path, clock, 101)
    a.fail(3)  # at 1000: older than the window when B starts
    a.tracker.record(PROVIDER, duration_s=0.1, status_code=429, headers={"Retry-After": "300"})
    a.sync()
    clock.advance(50)
    for _ in range(2):
        a.tracker.record(PROVIDER, duration_s=0.1, status_code=200)
    a.sync()
    clock.advance(20)  # 1070: the window (60 s) holds the two successes only
    b = worker(tmp_path, clock, 102)
    assert b.sync() == 3  # two calls, and the 429 whose deadline is still running
    health = b.tracker.status(PROVIDER)
    assert health.calls == 2 and health.error_rate == 0.0
    assert health.rate_limited_until is not None  # the old 429's cooldown still runs
    assert b.channel.too_old == 3
    assert a.tracker.status(PROVIDER).calls == 2


def test_files_rotate_and_the_old_ones_go_a_minute_later(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=1, clock=clock, rotate_bytes=1000)
    reader = HostChannel(str(tmp_path), pid=2, clock=clock)
    sent: list[SharedOutcome] = []
    received: list[SharedOutcome] = []
    first = ""
    for index in range(30):
        batch = [_outcome(clock(), f"p{index}")]
        writer.publish(batch)
        sent += batch
        first = first or writer.path
        if index % 7 == 0:
            received += reader.receive()
    received += reader.receive()
    assert received == sent  # across the files, in order, nothing lost or repeated
    assert writer.path != first and os.path.exists(first)
    clock.advance(61)
    writer.publish([_outcome(clock())])
    assert not os.path.exists(first)
    assert reader.receive() == [_outcome(clock())]
    writer.close()
    reader.close()


class FailingChannel:
    """A channel that keeps what it failed to send, as the Redis channel does."""

    name = "redis"

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_s
        self.failing = True
        self.kept: list[SharedOutcome] = []
        self.published: list[list[SharedOutcome]] = []
        self.calls = 0

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        self.calls += 1
        self.kept += outcomes
        if self.failing:
            raise OSError("connection refused")
        if self.kept:
            self.published.append(self.kept)
        self.kept = []

    def receive(self) -> list[SharedOutcome]:
        return []

    def close(self) -> None:
        pass


def test_a_failing_channel_is_counted_and_reported_and_leaves_the_others_working(
    tmp_path: Path, clock: FakeClock
) -> None:
    a, b = worker(tmp_path, clock, 101), worker(tmp_path, clock, 102)
    broken = FailingChannel()
    errors: list[str] = []
    a.sharing = Sharing(a.tracker, [broken, a.channel], on_error=lambda name, error: errors.append(name))
    a.fail(5)
    a.sync()
    b.sync()
    assert not b.tracker.allow(PROVIDER)  # the host channel carried it
    redis, host = a.sharing.status()
    assert (redis.name, redis.ok, redis.errors, redis.pending) == ("redis", False, 1, 0)
    assert redis.last_error == "OSError: connection refused" and redis.last_error_at is not None
    assert (host.name, host.ok, host.errors, host.sent) == ("host", True, 0, 5)
    assert errors == ["redis"]
    broken.failing = False
    a.sync()  # called with nothing new: what the channel kept goes through, once
    assert [len(batch) for batch in broken.published] == [5]
    redis = a.sharing.status()[0]
    assert redis.ok and redis.errors == 1 and redis.last_error is not None


def test_host_channel_keeps_what_a_failed_write_did_not_land(tmp_path: Path, clock: FakeClock,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    writer = HostChannel(str(tmp_path), pid=1, clock=clock)
    reader = HostChannel(str(tmp_path), pid=2, clock=clock)
    writer.publish([_outcome(clock(), "first")])
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        writer.publish([_outcome(clock(), "second")])
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:10]))  # a cut record
    with pytest.raises(OSError):
        writer.publish([])
    cut = writer.path
    monkeypatch.setattr(os, "write", real_write)
    writer.publish([_outcome(clock(), "third")])
    assert writer.path != cut  # the cut file was left for a new one
    assert [item.provider for item in reader.receive()] == ["first", "second", "third"]
    assert writer.sent == 3 and writer.dropped == 0
    writer.close()
    reader.close()


def test_a_slower_channel_gets_its_outcomes_batched_at_its_own_cadence(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    tracker.share_outcomes()
    slow = FailingChannel(interval_s=0.5)
    slow.failing = False
    sharing = Sharing(tracker, [slow], clock=clock)
    for _ in range(6):  # rounds at 0, 0.1 .. 0.5 s
        tracker.record(PROVIDER, duration_s=0.1, status_code=200)
        sharing.sync_once()
        clock.advance(0.1)
    assert [len(batch) for batch in slow.published] == [1, 5]


def test_stop_publishes_what_is_left(tmp_path: Path) -> None:
    tracker = HealthTracker()
    sharing = Sharing(tracker, [HostChannel(str(tmp_path), pid=1)], gate=FileTrialGate(str(tmp_path), pid=1),
                      interval_s=60.0)
    sharing.start()
    assert tracker.trial_gate is sharing.gate
    tracker.record(PROVIDER, duration_s=0.1, status_code=503)
    sharing.stop()
    assert tracker.trial_gate is None
    assert sharing.status()[0].sent == 1
    assert [item.provider for item in HostChannel(str(tmp_path), pid=2).receive()] == [PROVIDER]


def test_the_thread_shares_a_trip_within_a_few_rounds(tmp_path: Path) -> None:
    a, b = HealthTracker(), HealthTracker()
    sharings = [Sharing(tracker, [HostChannel(str(tmp_path), pid=pid)], interval_s=0.01)
                for pid, tracker in ((1, a), (2, b))]
    for sharing in sharings:
        sharing.start()
    try:
        for _ in range(5):
            a.record(PROVIDER, duration_s=0.1, status_code=503)
        deadline = time.monotonic() + 2.0
        while b.allow(PROVIDER) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert not b.allow(PROVIDER)
    finally:
        for sharing in sharings:
            sharing.stop()


def trial_out(tmp_path: Path, clock: FakeClock) -> tuple[Worker, Worker, Permit]:
    """Two workers, one trial at a time: a tripped the circuit, and after the cooldown
    holds the trial permit."""
    config = HealthConfig(trials_at_once=1, open_cooldown_s=5.0, max_cooldown_s=10.0, trial_timeout_s=300.0)
    a, b = worker(tmp_path, clock, 101, config), worker(tmp_path, clock, 102, config)
    a.fail(config.consecutive_failures)
    sync(a, b)
    clock.advance(config.open_cooldown_s)
    trial = a.tracker.allow(PROVIDER)
    assert trial.trial
    return a, b, trial


def test_a_trial_overtaken_by_a_probe_gives_its_place_back(tmp_path: Path, clock: FakeClock) -> None:
    a, b, trial = trial_out(tmp_path, clock)
    clock.advance(1)
    b.tracker.record_probe(PROVIDER, True, sent_at=clock())  # overtakes a's trial: voided in both
    sync(a, b)
    assert trial.void
    a.tracker.record(PROVIDER, duration_s=0.2, status_code=200, permit=trial)
    sync(a, b)
    # Neither process has a trial out, so one of them must get the next one.
    assert a.tracker.allow(PROVIDER) or b.tracker.allow(PROVIDER)


def test_a_trial_that_ends_without_a_verdict_frees_the_other_workers_at_once(tmp_path: Path,
                                                                               clock: FakeClock) -> None:
    a, b, trial = trial_out(tmp_path, clock)
    sync(a, b)
    assert not b.tracker.allow(PROVIDER)  # a's trial is out
    clock.advance(0.5)
    a.tracker.record(PROVIDER, duration_s=0.5, status_code=404, permit=trial)  # no verdict
    sync(a, b)
    assert b.tracker.allow(PROVIDER).trial  # not a hold's 10 s later


@pytest.mark.parametrize("prober", ["holder", "other"])
def test_a_probe_success_after_a_failed_trial_frees_the_place_it_held(tmp_path: Path, clock: FakeClock,
                                                                      prober: str) -> None:
    # A failed trial keeps its place at the gate until the next trial is due, so no other
    # worker sends one before its verdict arrives; a probe that ends the cooldown early
    # must free that place, or the trials it lets go wait out the cooldown anyway.
    a, b, trial = trial_out(tmp_path, clock)
    probing = a if prober == "holder" else b
    clock.advance(0.5)
    reopened = clock()
    a.tracker.record(PROVIDER, duration_s=0.5, status_code=503, permit=trial)  # relapse: open 10 s
    sync(a, b)
    assert a.gate.held(PROVIDER, clock()) == 1  # its place, held for the next trial
    clock.advance(1)
    probing.tracker.record_probe(PROVIDER, True, sent_at=reopened - 0.1)  # sent before: ends nothing
    sync(a, b)
    assert a.tracker.status(PROVIDER).circuit is Circuit.OPEN
    assert a.gate.held(PROVIDER, clock()) == 1
    probing.tracker.record_probe(PROVIDER, True, sent_at=clock() - 0.2)  # sent after the circuit reopened
    sync(a, b)
    assert a.tracker.status(PROVIDER).circuit is Circuit.HALF_OPEN
    assert a.gate.held(PROVIDER, clock()) == 0
    assert b.tracker.allow(PROVIDER).trial  # at once, not 10 s after the failed trial


def test_a_trial_a_probe_let_through_that_fails_in_one_worker_misleads_the_probes_of_both(
        tmp_path: Path, clock: FakeClock) -> None:
    # The provider passes probes but fails calls: neither worker lets one passed probe end
    # the next cooldown, whichever probed and whichever sent the trial.
    config = HealthConfig(trials_at_once=1, open_cooldown_s=5.0, max_cooldown_s=10.0)
    a, b = worker(tmp_path, clock, 101, config), worker(tmp_path, clock, 102, config)
    a.fail(config.consecutive_failures)
    sync(a, b)
    clock.advance(1)
    b.tracker.record_probe(PROVIDER, True, sent_at=clock())  # half-open in both at once
    sync(a, b)
    trial = a.tracker.allow(PROVIDER)
    assert trial.trial
    clock.advance(0.5)
    a.tracker.record(PROVIDER, duration_s=0.5, status_code=503, permit=trial)
    sync(a, b)
    assert b.tracker.status(PROVIDER).circuit is Circuit.OPEN
    assert ("probes pass but a trial call they let through failed: until the circuit closes, probes end a "
            "cooldown once they have passed for 2 s") in b.tracker.status(PROVIDER).reasons
    for sent in (0.5, 1.5):  # one probe, then a run of 1 s: too short
        clock.advance(1)
        b.tracker.record_probe(PROVIDER, True, sent_at=clock() - 0.25)
        sync(a, b)
        assert a.tracker.status(PROVIDER).circuit is Circuit.OPEN, sent
    clock.advance(1)
    b.tracker.record_probe(PROVIDER, True, sent_at=clock() - 0.25)  # passing for 2 s
    sync(a, b)
    assert a.tracker.status(PROVIDER).circuit is Circuit.HALF_OPEN
    assert a.tracker.allow(PROVIDER).trial


def test_the_workers_of_a_host_send_one_probe_per_interval_between_them(tmp_path: Path, clock: FakeClock) -> None:
    a, b = worker(tmp_path, clock, 101, CONFIG), worker(tmp_path, clock, 102, CONFIG)
    assert a.tracker.claim_probe(PROVIDER, 1.0)
    assert not b.tracker.claim_probe(PROVIDER, 1.0)  # a sends this interval's probe
    assert b.tracker.claim_probe("anthropic", 1.0)  # each provider has its own
    clock.advance(0.6)
    assert a.tracker.claim_probe(PROVIDER, 1.0)  # its own claim: the prober that holds it goes on
    clock.advance(0.6)
    assert not b.tracker.claim_probe(PROVIDER, 1.0)
    clock.advance(1.0)
    assert b.tracker.claim_probe(PROVIDER, 1.0)  # a's claim ran out: b takes over
    a.gate.close()  # a's process gone: its claim frees at once
    b.gate.close()
    alone = HealthTracker(CONFIG, clock=clock)
    assert alone.claim_probe(PROVIDER, 1.0) and alone.claim_probe(PROVIDER, 1.0)  # no gate: always
