"""Trials and retrials across processes: announced as they go, and taken in turns by hosts.

Within a host the trial gate counts trials exactly; across hosts a channel is too slow to
count them, so each trial is announced (``GRANTED``) as it is sent, and the hosts take
turns when one is due: the host whose turn it is sends it, the next waits long enough to
have heard. Hosts here are trackers in one process on one fake clock, joined by
:class:`Bus`, an in-memory stand-in for Redis with RedisChannel's protocol (the real one
is tested in test_redis_channel.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.scoring import Circuit, HealthConfig, HealthTracker
from app.scoring.events import CALL, GRANTED, SharedOutcome, decode, encode
from app.scoring.sharing import TURN_ROUNDS, FileTrialGate, HostsAware, Sharing, turn_place
from tests.scoring.fake_clock import FakeClock

PROVIDER = "openrouter"
INTERVAL_S = 0.1
TURN_S = TURN_ROUNDS * INTERVAL_S
CONFIG = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, half_open_trials=3, trials_at_once=1)


class Bus:
    """What Redis holds for the channels: every host's published outcomes, in order."""

    def __init__(self) -> None:
        self.streams: dict[str, list[SharedOutcome]] = defaultdict(list)


class BusChannel:
    name = "bus"

    def __init__(self, bus: Bus, host_id: str) -> None:
        self.bus = bus
        self.host_id = host_id
        self.interval_s = INTERVAL_S
        self.hosts: tuple[str, ...] = ()
        self.read: dict[str, int] = {}

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        self.bus.streams[self.host_id].extend(outcomes)

    def receive(self) -> list[SharedOutcome]:
        received: list[SharedOutcome] = []
        for host, stream in self.bus.streams.items():
            if host != self.host_id:
                received.extend(stream[self.read.get(host, 0):])
                self.read[host] = len(stream)
        self.hosts = tuple(sorted({*self.bus.streams, self.host_id}))
        return received

    def close(self) -> None:
        pass


class Host:
    def __init__(self, bus: Bus, name: str, clock: FakeClock, config: HealthConfig = CONFIG) -> None:
        self.name = name
        self.tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
        self.channel = BusChannel(bus, name)
        self.sharing = Sharing(self.tracker, [self.channel], clock=clock)
        self.sharing.attach()

    def sync(self) -> None:
        self.sharing.sync_once(force=True)


@pytest.fixture
def hosts(clock: FakeClock) -> Iterator[list[Host]]:
    bus = Bus()
    made = [Host(bus, name, clock) for name in ("host-a", "host-b", "host-c")]
    yield made
    for host in made:
        host.sharing.stop()


def sync(hosts: list[Host]) -> None:
    """A round of every host, twice: whatever one published, every other has read."""
    for _ in range(2):
        for host in hosts:
            host.sync()


def trip(hosts: list[Host]) -> None:
    """The first host sees the provider fail until its circuit opens; all hear of it."""
    first = hosts[0].tracker
    for _ in range(first.config.consecutive_failures):
        first.record(PROVIDER, duration_s=0.1, status_code=503, permit=first.allow(PROVIDER))
    sync(hosts)
    assert all(host.tracker.status(PROVIDER).circuit is Circuit.OPEN for host in hosts)


def in_turn(hosts: list[Host], cycle: int, provider: str = PROVIDER) -> list[Host]:
    """The hosts in the order of their turns at ``provider``'s ``cycle``."""
    names = tuple(sorted(host.name for host in hosts))
    return sorted(hosts, key=lambda host: turn_place(names, host.name, provider, cycle))


# --- the turns ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 4, 16])
def test_every_host_has_its_own_place_and_the_first_goes_round(count: int) -> None:
    names = tuple(f"host-{index:02d}" for index in range(count))
    firsts = set()
    for cycle in range(-1, 40):
        places = sorted(turn_place(names, name, PROVIDER, cycle) for name in names)
        assert places == list(range(count))
        firsts.add(next(name for name in names if turn_place(names, name, PROVIDER, cycle) == 0))
    assert len(firsts) >= min(count, 3)  # not one host leading every cycle
    by_provider = {next(name for name in names if turn_place(names, name, f"provider-{index}", 1) == 0)
                   for index in range(40)}
    assert len(by_provider) >= min(count, 3)  # nor every provider


def test_a_host_alone_or_not_listed_waits_for_nobody() -> None:
    assert turn_place(("host-a",), "host-a", PROVIDER, 3) == 0
    assert turn_place((), "host-a", PROVIDER, 3) == 0
    assert turn_place(("host-b", "host-c"), "host-a", PROVIDER, 3) == 0


def test_a_granted_outcome_survives_the_wire() -> None:
    sent = [SharedOutcome(CALL, PROVIDER, GRANTED, 12.5, 12.5, True)]
    assert decode(encode(sent)) == sent


# --- trials across hosts --------------------------------------------------------------


def test_after_the_cooldown_one_trial_goes_from_the_host_whose_turn_it_is(hosts: list[Host],
                                                                           clock: FakeClock) -> None:
    trip(hosts)
    cycle = hosts[0].tracker._providers[PROVIDER].breaker.trips
    first, second, third = in_turn(hosts, cycle)
    clock.advance(CONFIG.open_cooldown_s)
    # The cooldown is over everywhere: every host reads half-open, only the first may send.
    assert {host.tracker.status(PROVIDER).circuit for host in hosts} == {Circuit.HALF_OPEN}
    assert not second.tracker.allow(PROVIDER) and not third.tracker.allow(PROVIDER)
    trial = first.tracker.allow(PROVIDER)
    assert trial and trial.trial
    sync(hosts)
    clock.advance(2 * TURN_S + 0.01)  # every turn has come: the announced trial still holds them
    assert not second.tracker.allow(PROVIDER) and not third.tracker.allow(PROVIDER)
    assert "1 trial call in flight" in " ".join(second.tracker.status(PROVIDER).reasons)
    first.tracker.record(PROVIDER, duration_s=0.2, status_code=200, permit=trial)
    sync(hosts)
    # Its verdict counts everywhere, and every host heard it at once: the next trial takes
    # turns again from then, or each host would send one.
    assert all("1 of 3 passed" in " ".join(host.tracker.status(PROVIDER).reasons) for host in hosts)
    assert not second.tracker.allow(PROVIDER) and not third.tracker.allow(PROVIDER)
    clock.advance(2 * TURN_S + 0.01)  # the first and the second had no call to send it with
    follow_up = third.tracker.allow(PROVIDER)
    assert follow_up and follow_up.trial


def test_the_second_host_sends_in_its_turn_when_the_first_has_no_call(hosts: list[Host],
                                                                      clock: FakeClock) -> None:
    trip(hosts)
    cycle = hosts[0].tracker._providers[PROVIDER].breaker.trips
    _, second, _ = in_turn(hosts, cycle)
    clock.advance(CONFIG.open_cooldown_s + TURN_S - 0.01)
    assert not second.tracker.allow(PROVIDER)
    clock.advance(0.02)
    permit = second.tracker.allow(PROVIDER)
    assert permit and permit.trial


def test_a_failed_trial_from_one_host_reopens_the_circuit_on_every_host(hosts: list[Host],
                                                                        clock: FakeClock) -> None:
    trip(hosts)
    cycle = hosts[0].tracker._providers[PROVIDER].breaker.trips
    first, *others = in_turn(hosts, cycle)
    clock.advance(CONFIG.open_cooldown_s)
    trial = first.tracker.allow(PROVIDER)
    sync(hosts)
    clock.advance(0.1)
    first.tracker.record(PROVIDER, duration_s=0.1, status_code=503, permit=trial)
    sync(hosts)
    for host in hosts:
        breaker = host.tracker._providers[PROVIDER].breaker
        assert breaker.state is Circuit.OPEN and breaker.trips == cycle + 1  # in step: the next turn agrees
        assert breaker.next_trial_at == pytest.approx(trial.issued + 2 * CONFIG.open_cooldown_s)
    assert not any(host.tracker.allow(PROVIDER) for host in others)


def test_a_host_that_dies_holding_a_trial_holds_the_others_for_at_most_a_cooldown(
        hosts: list[Host], clock: FakeClock) -> None:
    trip(hosts)
    cycle = hosts[0].tracker._providers[PROVIDER].breaker.trips
    first, second, _ = in_turn(hosts, cycle)
    clock.advance(CONFIG.open_cooldown_s)
    assert first.tracker.allow(PROVIDER).trial  # and first is never heard of again
    sync(hosts)
    clock.advance(CONFIG.max_cooldown_s - 0.01)
    assert not second.tracker.allow(PROVIDER)
    clock.advance(0.02)
    # The hold ran out at the same moment in every host: the turns start again from then.
    assert not second.tracker.allow(PROVIDER)
    clock.advance(TURN_S)
    assert second.tracker.allow(PROVIDER).trial


def test_without_a_channel_that_crosses_hosts_nobody_waits(tmp_path: Path, clock: FakeClock) -> None:
    tracker = HealthTracker(CONFIG, clock=clock, wall_clock=clock.wall)
    sharing = Sharing(tracker, [], gate=FileTrialGate(str(tmp_path), pid=7), clock=clock)
    sharing.attach()
    assert tracker.turn is None and not isinstance(object(), HostsAware)
    for _ in range(CONFIG.consecutive_failures):
        tracker.record(PROVIDER, duration_s=0.1, status_code=503, permit=tracker.allow(PROVIDER))
    clock.advance(CONFIG.open_cooldown_s)
    assert tracker.allow(PROVIDER).trial
    sharing.stop()


def test_stop_takes_the_turns_away(hosts: list[Host]) -> None:
    host = hosts[0]
    assert host.tracker.turn is not None
    host.sharing.stop()
    assert host.tracker.turn is None


# --- retrials of a provider ranked out --------------------------------------------------


def ranked_out(tracker: HealthTracker, clock: FakeClock) -> None:
    """``bad`` fails 4 calls in 10 (no trip) while ``good`` answers all: ``bad`` ranks out."""
    for index in range(10):
        for name in ("good", "bad"):
            failed = name == "bad" and index % 5 in (1, 3)
            tracker.record(name, duration_s=0.3, status_code=503 if failed else 200,
                           permit=tracker.allow(name))
        clock.advance(0.1)
    assert tracker.status("bad").circuit is Circuit.CLOSED
    assert tracker.choose(["good", "bad"], claim=False).order[0] == "good"


def test_every_host_ranks_the_provider_out_alike(hosts: list[Host], clock: FakeClock) -> None:
    ranked_out(hosts[0].tracker, clock)
    sync(hosts)
    assert {host.tracker.status("bad").circuit for host in hosts} == {Circuit.CLOSED}
    assert {host.tracker.choose(["good", "bad"], claim=False).order[0] for host in hosts} == {"good"}


def test_a_call_after_a_pause_is_announced_and_is_the_retrial_for_every_host(hosts: list[Host],
                                                                               clock: FakeClock) -> None:
    ranked_out(hosts[0].tracker, clock)
    sync(hosts)
    clock.advance(CONFIG.max_cooldown_s + 2 * TURN_S + 0.01)  # every host's turn has come
    first, *others = hosts
    assert all(host.tracker.choose(["good", "bad"], claim=False).order[0] == "bad" for host in hosts)
    first.tracker.allow("bad")
    outcomes = first.tracker.take_outcomes()
    assert [(item.outcome, item.trial) for item in outcomes if item.provider == "bad"] == [(GRANTED, False)]
    for host in others:
        host.tracker.apply(outcomes)
        assert host.tracker.choose(["good", "bad"]).order[0] == "good"  # sent once, not once per host


def test_a_retrial_waits_for_the_host_turn(hosts: list[Host], clock: FakeClock) -> None:
    ranked_out(hosts[0].tracker, clock)
    sync(hosts)
    first, second, _ = in_turn(hosts, -1, "bad")
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    assert first.tracker.choose(["good", "bad"]).order[0] == "bad"
    assert second.tracker.choose(["good", "bad"]).order[0] == "good"
    clock.advance(TURN_S)
    assert second.tracker.choose(["good", "bad"]).order[0] == "bad"


def test_the_workers_of_a_host_claim_a_retrial_once(tmp_path: Path, clock: FakeClock) -> None:
    workers = []
    for pid in (201, 202):
        tracker = HealthTracker(CONFIG, clock=clock, wall_clock=clock.wall)
        tracker.trial_gate = FileTrialGate(str(tmp_path), pid=pid)
        ranked_out(tracker, clock)
        workers.append(tracker)
    clock.advance(CONFIG.max_cooldown_s + 0.01)
    one, other = workers
    assert other.choose(["good", "bad"], claim=False).order[0] == "bad"  # reading claims nothing
    assert one.choose(["good", "bad"]).order[0] == "bad"
    assert other.choose(["good", "bad"]).order[0] == "good"  # the claim holds for the host
    clock.advance(1.01)  # the claim lapses: a worker that never heard of a call may claim it
    assert other.choose(["good", "bad"]).order[0] == "bad"

