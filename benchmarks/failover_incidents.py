"""Failover under incidents: our HealthTracker against three baselines, alone and in fleets, on the same traffic.

Six simulated minutes of 50 calls/s (Poisson arrivals, seeded) over four providers, in
three incidents that differ only in what ``down`` does:

- ``outage``: ``down`` fails hard for two minutes from 60 s (503s, refused connections,
  10 s timeouts), then recovers (``--down-start`` moves it);
- ``flapping``: ``down`` fails hard for 20 s and is fine for 20 s, for five minutes from 30 s;
- ``rising``: ``down``'s failures climb from 0% at 60 s to 60% at 240 s, stay there until
  300 s and stop; its incident is the time it fails half its calls or more (210-300 s).

In every incident ``slow`` gets slow (its latency climbs from 0.8 s to 20 s between 200 s
and 250 s, stays there until 300 s and is back to normal at 310 s), ``bursty`` answers
every call with a 429 for 10 s out of every 40 s, its ``Retry-After`` saying how long the
burst has left, and ``steady`` is fine throughout.

Every call draws its random numbers before a provider is picked, so each policy meets
the same traffic. A call's outcome reaches the policy when the call ends (a timeout
after 10 s, a slow answer after 20 s), as in a gateway. Policies, each a small class
with ``pick(candidates, now)`` and ``observe(provider, outcome, now)``:

- ours: ``HealthTracker.choose`` then ``allow`` down the failover order (and in panic the
  choice anyway), every outcome fed back through ``record`` with the call's permit;
- ours with probes: the same, plus an active probe of each provider every 15 s (every 1 s
  while its circuit is not closed or its score ranks it out, Envoy's
  ``unhealthy_interval``), as ``ProbeRunner`` runs them, each due an interval after the
  last was sent; a probe costs no user call, answers like a call would and gives up
  after 5 s;
- round-robin;
- Envoy-like outlier detection: 5 consecutive failures (5xx, timeouts, refused
  connections) eject a host for 30 s x its ejections (at most 300 s); no half-open, the
  host is back when its ejection ends; at most one host ejected at a time (Envoy's
  ``max_ejection_percent`` of 10% allows one);
- LiteLLM's router cooldowns: 5 s after a 429, or after a failure when more than 50% of
  the deployment's calls in the current minute failed and it had at least 5; random
  choice among deployments not cooling down (its default "simple-shuffle").

Then the same policies in several processes, each call served by one of them picked at
random (seeded), as a gateway's workers and replicas take them:

- ours, 4 workers: four HealthTrackers sharing through the code the workers run
  (``HostChannel`` on a temporary directory, ``FileTrialGate``, ``Sharing.sync_once`` every
  25 ms of simulated time);
- ours, 4 replicas x 4 workers: sixteen, four hosts as above, the hosts sharing through a
  simulated Redis at the service's cadence (``app.telemetry.REDIS_INTERVAL_S``: a round every
  0.1 s per process, each process's rounds at a seeded phase: up to 0.1 s to leave, up to 0.1 s
  to be read);
  half-open trials are counted per host, as in production;
- ours, 16 processes, no sharing: sixteen trackers deciding alone;
- LiteLLM, 16 instances, Redis: sixteen of the LiteLLM policy below, each counting its own
  minute's failures, a cooldown set by one seen by the others at their next read of Redis,
  once a second at a seeded phase (its PR #40025).

The first two run again with probes (``ours + probes, 4 workers`` and ``ours + probes, 4 x
4``; compare them with ours + probes): every worker runs its prober (:class:`Prober`) from a
start at a random instant of the first second, and claims each probe on its host's trial
gate (``HealthTracker.claim_probe``), as ``ProbeRunner`` does. The others run without
probes (compare them with ours, one process without probes).

Columns (an incident with several bad periods gives the mean over them):

- detection: seconds from the start of ``down``'s bad period to the first avoided call:
  the send time of the last call routed to ``down`` before the first pause of at least
  1 s in its calls during the period (at 50 calls/s over four providers a pause that
  long does not happen by chance; "never" when there is none);
- down share: calls routed to ``down`` during its bad periods / all calls in them
  (the count in brackets);
- into cooldown: calls routed to ``bursty`` before the end of a cooldown it had already
  announced (a 429 whose ``Retry-After`` the policy had received and which had not run out);
- slow share: calls routed to ``slow`` while its latency is over 10 s / all calls then
  (count in brackets);
- take back: seconds from ``down``'s recovery to the end of the first call it serves
  successfully afterwards (when it serves none before its next bad period, the whole
  good period counts);
- failed: all calls that failed, timed out or were throttled, of the whole run.

It also times ``allow`` and ``record`` (a success and a failure, with and without the
permit) on this machine, in microseconds per call.

    .venv/bin/python benchmarks/failover_incidents.py [--seed 7] [--incident outage] [--down-start 60]

The default start, on a minute boundary, is LiteLLM's best case: its failure share is
counted per calendar minute, so an incident that begins mid-minute has to outweigh the
minute's earlier successes first.

Targets for ours (seed 7): with probes, better than or equal to every baseline of one
process that avoids a failing provider in every column; without probes the same except
take back, which stays within 15 s. For the shared processes: detection, down share and
failed within 1.25x of ours (one process) for 4 workers and within 2x for 4 x 4; calls
into an announced cooldown no more than LiteLLM's single instance; and no column where
LiteLLM's 16 instances do better. The script prints what is missed under each table.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.scoring import HealthTracker, Permit
from app.scoring.events import SharedOutcome
from app.scoring.sharing import INTERVAL_S, Channel, FileTrialGate, HostChannel, Sharing
from app.telemetry import REDIS_INTERVAL_S

PROVIDERS = ("down", "slow", "bursty", "steady")
RATE = 50.0  # calls per second
DURATION_S = 360.0
DOWN_LENGTH_S = 120.0
FLAP_START_S, FLAP_DOWN_S, FLAP_UP_S, FLAP_FOR_S = 30.0, 20.0, 20.0, 300.0
RISE = (60.0, 240.0, 300.0, 0.6)  # starts failing, at its peak, stops, peak failure share
SLOW_RAMP = (200.0, 250.0, 300.0, 310.0)  # starts climbing, at its peak, starts falling, normal
SLOW_BASE_S, SLOW_PEAK_S = 0.8, 20.0
SLOW_CALL_S = 10.0
BURST_EVERY_S, BURST_LENGTH_S, BURST_FIRST_S = 40.0, 10.0, 20.0
TIMEOUT_S = 10.0
DETECTION_PAUSE_S = 1.0
TAKE_BACK_LIMIT_S = 15.0  # without probes
PROBE_INTERVAL_S, PROBE_UNHEALTHY_INTERVAL_S, PROBE_TIMEOUT_S = 15.0, 1.0, 5.0
INCIDENTS = ("outage", "flapping", "rising")
WALL_START = 1_700_000_000.0
LITELLM_POLL_S = 1.0  # LiteLLM's cooldowns read back from Redis (PR #40025)


# --- the traffic -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    incident: str = "outage"
    down_start: float = 60.0

    def failure_share(self, t: float) -> float:
        """The share of ``down``'s calls that fail at ``t``."""
        if self.incident == "outage":
            return 1.0 if self.down_start <= t < self.down_start + DOWN_LENGTH_S else 0.0
        if self.incident == "flapping":
            if not FLAP_START_S <= t < FLAP_START_S + FLAP_FOR_S:
                return 0.0
            return 1.0 if (t - FLAP_START_S) % (FLAP_DOWN_S + FLAP_UP_S) < FLAP_DOWN_S else 0.0
        rise, peak, stop, top = RISE
        if t < rise or t >= stop:
            return 0.0
        return top * min(1.0, (t - rise) / (peak - rise))

    @property
    def bad_periods(self) -> list[tuple[float, float]]:
        """When ``down`` fails half its calls or more: (start, end) of each period."""
        if self.incident == "outage":
            return [(self.down_start, self.down_start + DOWN_LENGTH_S)]
        if self.incident == "flapping":
            cycle = FLAP_DOWN_S + FLAP_UP_S
            return [(FLAP_START_S + k * cycle, FLAP_START_S + k * cycle + FLAP_DOWN_S)
                    for k in range(int(FLAP_FOR_S // cycle))]
        rise, peak, stop, top = RISE
        return [(rise + (peak - rise) * 0.5 / top, stop)]

    def describe(self) -> str:
        if self.incident == "outage":
            return f"down fails {self.down_start:.0f}-{self.down_start + DOWN_LENGTH_S:.0f} s"
        if self.incident == "flapping":
            return (f"down fails {FLAP_DOWN_S:.0f} s of every {FLAP_DOWN_S + FLAP_UP_S:.0f} s "
                    f"from {FLAP_START_S:.0f} s to {FLAP_START_S + FLAP_FOR_S:.0f} s")
        rise, peak, stop, top = RISE
        start, end = self.bad_periods[0]
        return (f"down's failures rise 0%->{top:.0%} over {rise:.0f}-{peak:.0f} s, stop at {stop:.0f} s "
                f"(>= 50% from {start:.0f} s)")


@dataclass(frozen=True, slots=True)
class Outcome:
    duration_s: float
    status_code: int | None = None
    error: str | None = None
    headers: dict[str, str] | None = None

    @property
    def failed(self) -> bool:  # what a consecutive-failure breaker counts
        return self.error is not None or (self.status_code is not None and self.status_code >= 500)

    @property
    def throttled(self) -> bool:
        return self.status_code == 429

    @property
    def ok(self) -> bool:
        return not self.failed and not self.throttled

    @property
    def retry_after_s(self) -> float | None:
        return float(self.headers["retry-after"]) if self.headers and "retry-after" in self.headers else None


def slow_latency_s(t: float) -> float:
    rise, peak, fall, back = SLOW_RAMP
    if t < rise or t >= back:
        return SLOW_BASE_S
    if t < peak:
        return SLOW_BASE_S + (SLOW_PEAK_S - SLOW_BASE_S) * (t - rise) / (peak - rise)
    if t < fall:
        return SLOW_PEAK_S
    return SLOW_PEAK_S - (SLOW_PEAK_S - SLOW_BASE_S) * (t - fall) / (back - fall)


def slow_period() -> tuple[float, float]:
    """When ``slow`` answers in more than SLOW_CALL_S (to the centisecond)."""
    over = [step / 100 for step in range(int(DURATION_S * 100)) if slow_latency_s(step / 100) > SLOW_CALL_S]
    return over[0], over[-1] + 0.01


def burst_end(t: float) -> float | None:
    """End of the 429 burst ``bursty`` is in at ``t``, or None."""
    if t < BURST_FIRST_S:
        return None
    start = BURST_FIRST_S + math.floor((t - BURST_FIRST_S) / BURST_EVERY_S) * BURST_EVERY_S
    return start + BURST_LENGTH_S if t < start + BURST_LENGTH_S else None


def respond(scenario: Scenario, provider: str, t: float, u: float, v: float) -> Outcome:
    """What ``provider`` answers to a call sent at ``t``; ``u`` and ``v`` are the call's draws."""
    if provider == "down" and u < (fails := scenario.failure_share(t)):
        kind = u / fails  # which failure, from the same draw: 60% 503s, 20% refused, 20% timeouts
        if kind < 0.6:
            return Outcome(0.05 + 0.2 * v, status_code=503)
        if kind < 0.8:
            return Outcome(0.01 + 0.02 * v, error="connect error")
        return Outcome(TIMEOUT_S, error="timeout")
    if provider == "bursty" and (end := burst_end(t)) is not None:
        return Outcome(0.05, status_code=429, headers={"retry-after": str(math.ceil(end - t))})
    if u < 0.002:  # background noise every provider has
        return Outcome(0.1 + 0.2 * v, status_code=500)
    if provider == "slow":
        return Outcome(slow_latency_s(t) * (0.9 + 0.2 * v), status_code=200)
    return Outcome(0.5 + 0.6 * v, status_code=200)


def traffic(seed: int) -> list[tuple[float, float, float]]:
    """(send time, u, v) of every call: Poisson arrivals at RATE and two uniform draws."""
    rng = random.Random(seed)
    calls, t = [], 0.0
    while True:
        t += rng.expovariate(RATE)
        if t >= DURATION_S:
            return calls
        calls.append((t, rng.random(), rng.random()))


# --- the policies ----------------------------------------------------------------------------


class Policy(Protocol):
    name: str
    #: What ``pick`` left for ``observe`` to get back with the call's outcome (the call's
    #: permit, the process that served it), or None.
    last_ticket: object

    def pick(self, candidates: tuple[str, ...], now: float) -> str: ...

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None: ...


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_START + self.now


def route(tracker: HealthTracker, candidates: tuple[str, ...]) -> tuple[str, Permit, bool]:
    """What the gateway does with a call: ``choose``, then ``allow`` down the failover
    order (in panic the choice anyway), and ``start``. The provider, its permit, panic."""
    choice = tracker.choose(candidates)
    for provider in choice.order:
        permit = tracker.allow(provider)
        if permit:
            break
    else:  # every circuit shut: panic, call the least bad one anyway
        provider = choice.provider
        permit = tracker.allow(provider)
    tracker.start(provider)
    return provider, permit, choice.panic


class Ours:
    """HealthTracker.choose, then allow() down the failover order; outcomes to record()
    with the call's permit."""

    name = "ours"

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.clock = SimClock()
        self.moves: list[tuple[float, str, str, str, str]] = []
        self.circuit = dict.fromkeys(PROVIDERS, "closed")
        self.tracker = HealthTracker(clock=self.clock, wall_clock=self.clock.wall)
        self.tracker.add_listener(self._moved)
        self.panics = 0
        self.last_ticket: object = None  # the call's permit, handed back to observe

    def _moved(self, provider: str, before: str, after: str, reason: str) -> None:
        self.moves.append((self.clock.now, provider, before, after, reason))
        self.circuit[provider] = after

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        self.clock.now = now
        provider, permit, panic = route(self.tracker, candidates)
        self.panics += panic
        self.last_ticket = permit
        return provider

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        self.clock.now = now
        permit = ticket if isinstance(ticket, Permit) else None
        self.tracker.record(provider, duration_s=outcome.duration_s, status_code=outcome.status_code,
                            error=outcome.error, headers=outcome.headers, permit=permit)


class Prober:
    """One process's ``ProbeRunner`` in the replay: a probe of each provider every 15 s,
    every 1 s while the provider needs watching (circuit not closed, or ranked out by its
    score), each due an interval after the last was sent; a probe answers as a call would
    and gives up after 5 s. The first probes go at ``first_s`` (a process's start)."""

    def __init__(self, tracker: HealthTracker, clock: SimClock, scenario: Scenario, rng: random.Random,
                 first_s: float = 0.0) -> None:
        self.tracker = tracker
        self.clock = clock
        self.scenario = scenario
        self.rng = rng
        self.probes: list[tuple[float, int, str, bool, float]] = []  # (ends, seq, provider, ok, sent)
        # When each was last sent: the first ones are due at first_s.
        self.last_probe: dict[str, float] = dict.fromkeys(PROVIDERS, first_s - PROBE_INTERVAL_S)
        self.seq = itertools.count()
        self.seen = -math.inf  # the last instant this process ran at
        self.sent = 0

    def next_at(self, floor: float, by: float = math.inf) -> float:
        """When this process's next probe event comes: a probe sent (not before ``floor``,
        the last instant it ran at) or one ending; inf when none can come by ``by``."""
        ends = self.probes[0][0] if self.probes else math.inf
        if ends > by and min(self.last_probe.values()) + PROBE_UNHEALTHY_INTERVAL_S > by:
            return math.inf  # nothing due by then, whichever interval applies (the cheap test)
        return min(ends, max(floor, min(self._due(name) for name in PROVIDERS)))

    def _interval(self, name: str) -> float:
        return PROBE_UNHEALTHY_INTERVAL_S if self.tracker.needs_watching(name) else PROBE_INTERVAL_S

    def _due(self, name: str) -> float:
        return self.last_probe[name] + self._interval(name)

    def step(self, floor: float) -> float:
        """Do the next probe event (see ``next_at``); when it happened."""
        ends = self.probes[0][0] if self.probes else math.inf
        at, name = min((self._due(name), name) for name in PROVIDERS)
        if at <= ends:
            at = max(at, floor)  # noticed due at the last event seen, not earlier
            interval = self._interval(name)  # before the send moves its due time
            self.last_probe[name] = at
            if self.tracker.trial_gate is not None:  # a worker: the host's workers take turns
                self.clock.now = at
                if not self.tracker.claim_probe(name, interval):
                    return at  # another worker of the host sends this one
            answer = respond(self.scenario, name, at, self.rng.random(), self.rng.random())
            heapq.heappush(self.probes, (at + min(answer.duration_s, PROBE_TIMEOUT_S), next(self.seq),
                                         name, answer.ok, at))
            self.sent += 1
            return at
        ended, _, name, ok, sent = heapq.heappop(self.probes)
        self.clock.now = ended
        self.tracker.record_probe(name, ok, sent)
        return ended

    def run(self, now: float) -> None:
        """Every probe event due by ``now``, in order."""
        while self.next_at(self.seen) <= now:
            self.seen = max(self.seen, self.step(self.seen))
        self.seen = max(self.seen, now)


class OursWithProbes(Ours):
    """Ours, with a :class:`Prober` beside it."""

    name = "ours + probes"

    def __init__(self, seed: int, scenario: Scenario) -> None:
        super().__init__(seed, scenario)
        self.prober = Prober(self.tracker, self.clock, scenario, random.Random(seed + 2))

    @property
    def probes_sent(self) -> int:
        return self.prober.sent

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        self.prober.run(now)
        return super().pick(candidates, now)

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        self.prober.run(now)
        super().observe(provider, outcome, now, ticket)


class RoundRobin:
    name = "round-robin"
    last_ticket: object = None

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.turn = itertools.count()

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        return candidates[next(self.turn) % len(candidates)]

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        pass


class EnvoyConsecutive5xx:
    """Envoy outlier detection's consecutive_5xx (5), base_ejection_time 30 s x ejections,
    max_ejection_time 300 s, max_ejection_percent 10% (at least one host); round-robin.

    Simplified in Envoy's favour: an ejected host comes back the moment its ejection ends
    (Envoy waits for the next 10 s sweep)."""

    name = "Envoy consecutive 5xx"
    last_ticket: object = None

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.turn = itertools.count()
        self.consecutive: dict[str, int] = defaultdict(int)
        self.ejections: dict[str, int] = defaultdict(int)
        self.ejected_until: dict[str, float] = defaultdict(float)

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        healthy = [name for name in candidates if self.ejected_until[name] <= now] or list(candidates)
        return healthy[next(self.turn) % len(healthy)]

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        if not outcome.failed:
            self.consecutive[provider] = 0
            return
        self.consecutive[provider] += 1
        if self.ejected_until[provider] > now or self.consecutive[provider] < 5:
            return
        if any(until > now for name, until in self.ejected_until.items() if name != provider):
            return  # max_ejection_percent: one host out at a time of four
        self.ejections[provider] += 1
        self.ejected_until[provider] = now + min(30.0 * self.ejections[provider], 300.0)
        self.consecutive[provider] = 0


class LiteLLMCooldown:
    """LiteLLM's router: cooldown of 5 s (DEFAULT_COOLDOWN_TIME_SECONDS) on a 429, or when
    more than 50% (DEFAULT_FAILURE_THRESHOLD_PERCENT) of the current minute's calls failed
    with at least 5 (DEFAULT_FAILURE_THRESHOLD_MINIMUM_REQUESTS); simple-shuffle picks."""

    name = "LiteLLM cooldowns"
    last_ticket: object = None

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.rng = random.Random(seed + 1)
        self.cooldown_until: dict[str, float] = defaultdict(float)
        self.minute: dict[str, tuple[int, int, int]] = {}  # provider: (minute, successes, failures)

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        healthy = [name for name in candidates if self.cooldown_until[name] <= now] or list(candidates)
        return self.rng.choice(healthy)

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        minute = int(now // 60)
        current, ok, failed = self.minute.get(provider, (minute, 0, 0))
        if current != minute:
            ok = failed = 0
        if outcome.ok:
            self.minute[provider] = (minute, ok + 1, failed)
            return
        failed += 1
        self.minute[provider] = (minute, ok, failed)
        total = ok + failed
        if outcome.throttled or (failed / total > 0.5 and total >= 5):
            self.cooldown_until[provider] = now + 5.0


# --- several processes ------------------------------------------------------------------------


class SimRedis:
    """Redis as the replicas use it for outcomes: a stream per host, appended to by its
    processes, read by the other hosts' (the simulated clock stands for every host's)."""

    def __init__(self) -> None:
        self.streams: dict[str, list[SharedOutcome]] = defaultdict(list)


class SimRedisChannel:
    """One process's end of :class:`SimRedis`, with ``RedisChannel``'s protocol and cadence:
    ``Sharing`` calls it every ``interval_s`` (what the process records meanwhile waits in
    its batch), and it reads what the other hosts published since its last round. Between
    a call's outcome and another host's tracker: up to one round to leave, up to one to be
    read."""

    name = "redis"

    def __init__(self, server: SimRedis, host: str, interval_s: float = REDIS_INTERVAL_S) -> None:
        self.server = server
        self.host_id = host
        self.interval_s = interval_s
        self.read: dict[str, int] = {}  # host: entries read from its stream
        #: The hosts that published by the last receive, this one included (RedisChannel's).
        self.hosts: tuple[str, ...] = ()

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        self.server.streams[self.host_id].extend(outcomes)

    def receive(self) -> list[SharedOutcome]:
        received: list[SharedOutcome] = []
        for host, stream in self.server.streams.items():
            if host != self.host_id and len(stream) > self.read.get(host, 0):
                received.extend(stream[self.read.get(host, 0):])
                self.read[host] = len(stream)
        self.hosts = tuple(sorted({*self.server.streams, self.host_id}))
        return received

    def close(self) -> None:
        pass


class Fleet:
    """Ours in ``hosts`` x ``workers`` processes: a HealthTracker each, every call served by
    one of them picked at random (as uvicorn's or gunicorn's workers take them), its
    outcome recorded by that tracker with its permit.

    Shared, they run the code the workers run: the processes of a host share through
    ``HostChannel`` on a directory of their own and count their half-open trials on its
    ``FileTrialGate``, each ``Sharing.sync_once`` every 25 ms of simulated time; with more
    than one host, each process also shares through a simulated Redis at the service's cadence
    (trials stay counted per host, as in production). Each process starts sharing at a
    seeded instant of its first round, so the replicas' Redis rounds are out of phase."""

    def __init__(self, seed: int, scenario: Scenario, *, hosts: int, workers: int, shared: bool,
                 name: str, probes: bool = False) -> None:
        self.name = name
        self.clock = SimClock()
        self.rng = random.Random(seed + 3)
        self.panics = 0
        self.last_ticket: object = None  # (process, permit)
        self.trackers = [HealthTracker(clock=self.clock, wall_clock=self.clock.wall)
                         for _ in range(hosts * workers)]
        # Each process probes on its own (every worker runs its ProbeRunner), from its start.
        self.probers = [
            Prober(tracker, self.clock, scenario, random.Random(seed * 1009 + index),
                   first_s=self.rng.uniform(0.0, PROBE_UNHEALTHY_INTERVAL_S))
            for index, tracker in enumerate(self.trackers)
        ] if probes else []
        self.seen = 0.0  # the last instant of the replay's events
        self.sharings: list[tuple[float, Sharing]] = []  # (starts, its Sharing)
        self.directory: tempfile.TemporaryDirectory[str] | None = None
        self.rounds = 0  # Sharing rounds done (each on every process)
        if not shared:
            return
        self.directory = tempfile.TemporaryDirectory(prefix="failover-fleet-")
        redis = SimRedis()
        rounds = round(REDIS_INTERVAL_S / INTERVAL_S)
        for index, tracker in enumerate(self.trackers):
            host = f"host-{index // workers}"
            pid = 1_000_000 + index  # distinct processes: their own files, their own slots
            directory = os.path.join(self.directory.name, host)
            channels: list[Channel] = [HostChannel(directory, pid=pid, horizon_s=tracker.config.window_s,
                                                   clock=self.clock)]
            starts = 0.0
            if hosts > 1:
                channels.append(SimRedisChannel(redis, host))
                starts = INTERVAL_S * self.rng.randrange(rounds)
            sharing = Sharing(tracker, channels, gate=FileTrialGate(directory, pid=pid), clock=self.clock)
            sharing.attach()  # what Sharing.start does, without its thread: the replay drives the rounds
            self.sharings.append((starts, sharing))

    def _sync(self, now: float) -> None:
        """Every Sharing round and probe event due by ``now``, each at its own instant on
        the simulated clock, in order."""
        while True:
            round_at = self.rounds * INTERVAL_S if self.sharings else math.inf
            probe_at, prober = min(((prober.next_at(self.seen, now), index)
                                    for index, prober in enumerate(self.probers)), default=(math.inf, -1))
            if min(round_at, probe_at) > now:
                break
            if round_at <= probe_at:
                self.clock.now = self.seen = round_at
                for starts, sharing in self.sharings:
                    if round_at >= starts:
                        sharing.sync_once()
                self.rounds += 1
            else:
                self.seen = max(self.seen, self.probers[prober].step(self.seen))
        self.seen = max(self.seen, now)

    @property
    def probes_sent(self) -> int:
        return sum(prober.sent for prober in self.probers)

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        self._sync(now)
        self.clock.now = now
        process = self.rng.randrange(len(self.trackers))
        provider, permit, panic = route(self.trackers[process], candidates)
        self.panics += panic
        self.last_ticket = (process, permit)
        return provider

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        self._sync(now)
        self.clock.now = now
        assert isinstance(ticket, tuple)
        process, permit = ticket
        self.trackers[process].record(provider, duration_s=outcome.duration_s, status_code=outcome.status_code,
                                      error=outcome.error, headers=outcome.headers, permit=permit)

    def close(self) -> None:
        for _, sharing in self.sharings:
            sharing.stop()
        if self.directory is not None:
            self.directory.cleanup()


def fleet(name: str, hosts: int, workers: int, shared: bool, probes: bool = False
          ) -> Callable[[int, Scenario], Policy]:
    def make(seed: int, scenario: Scenario) -> Policy:
        return Fleet(seed, scenario, hosts=hosts, workers=workers, shared=shared, name=name, probes=probes)
    make.__name__ = name
    return make


class LiteLLMFleet:
    """LiteLLM's router in ``instances`` processes, its cooldowns shared through Redis: each
    instance counts its own minute's failures (the counts never leave it) and writes the
    cooldowns it sets to Redis; the others see them at their next poll, one batched read
    per second (PR #40025), each instance at a seeded phase. Every call goes to an
    instance picked at random."""

    def __init__(self, seed: int, scenario: Scenario, *, instances: int, name: str) -> None:
        self.name = name
        self.rng = random.Random(seed + 4)
        self.instances = [LiteLLMCooldown(seed + 100 * (index + 1), scenario) for index in range(instances)]
        self.phase = [self.rng.uniform(0.0, LITELLM_POLL_S) for _ in range(instances)]
        self.writes: list[tuple[float, str, float]] = []  # (written at, provider, cooldown until)
        self.read = [0] * instances  # writes each instance has read
        self.last_ticket: object = None  # the instance

    def _poll(self, index: int, now: float) -> None:
        """The instance's last poll at or before ``now``: every write made by then."""
        phase = self.phase[index]
        polled = phase + math.floor((now - phase) / LITELLM_POLL_S) * LITELLM_POLL_S
        instance, writes, read = self.instances[index], self.writes, self.read[index]
        while read < len(writes) and writes[read][0] <= polled:
            _, provider, until = writes[read]
            instance.cooldown_until[provider] = max(instance.cooldown_until[provider], until)
            read += 1
        self.read[index] = read

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        index = self.rng.randrange(len(self.instances))
        self._poll(index, now)
        self.last_ticket = index
        return self.instances[index].pick(candidates, now)

    def observe(self, provider: str, outcome: Outcome, now: float, ticket: object = None) -> None:
        assert isinstance(ticket, int)
        instance = self.instances[ticket]
        before = instance.cooldown_until[provider]
        instance.observe(provider, outcome, now)
        if instance.cooldown_until[provider] != before:  # set in memory and in Redis
            self.writes.append((now, provider, instance.cooldown_until[provider]))


def litellm_fleet(name: str, instances: int) -> Callable[[int, Scenario], Policy]:
    def make(seed: int, scenario: Scenario) -> Policy:
        return LiteLLMFleet(seed, scenario, instances=instances, name=name)
    make.__name__ = name
    return make


WORKERS_4, REPLICAS_4X4 = "ours, 4 workers", "ours, 4 replicas x 4 workers"
PROBED_4, PROBED_4X4 = "ours + probes, 4 workers", "ours + probes, 4 x 4"
UNSHARED_16 = "ours, 16 processes, no sharing"
LITELLM_16 = "LiteLLM, 16 instances, Redis"
#: The fleets, their targets against one process (ours, or ours + probes for the fleets
#: that probe) on detection, down share and failed.
FLEET_LIMITS = {WORKERS_4: 1.25, REPLICAS_4X4: 2.0, PROBED_4: 1.25, PROBED_4X4: 2.0}

POLICIES: tuple[Callable[[int, Scenario], Policy], ...] = (
    Ours, OursWithProbes, fleet(WORKERS_4, 1, 4, True), fleet(REPLICAS_4X4, 4, 4, True),
    fleet(PROBED_4, 1, 4, True, probes=True), fleet(PROBED_4X4, 4, 4, True, probes=True),
    fleet(UNSHARED_16, 16, 1, False), RoundRobin, EnvoyConsecutive5xx, LiteLLMCooldown,
    litellm_fleet(LITELLM_16, 16))
#: What the single-process targets compare with (one process each).
BASELINES = (RoundRobin.name, EnvoyConsecutive5xx.name, LiteLLMCooldown.name)


# --- the replay and its measures ---------------------------------------------------------------


@dataclass
class Result:
    name: str
    sends: list[tuple[float, str]] = field(default_factory=list)
    into_cooldown: int = 0
    failed: int = 0
    down_ok: list[tuple[float, float]] = field(default_factory=list)  # (sent, ended) of down's successes


def replay(policy: Policy, scenario: Scenario, calls: list[tuple[float, float, float]]) -> Result:
    """Send every call through ``policy``; outcomes reach it when each call ends."""
    result = Result(policy.name)
    # (ends, seq, provider, sent, outcome, ticket)
    pending: list[tuple[float, int, str, float, Outcome, object]] = []
    known_cooldown_end = -math.inf  # the latest Retry-After deadline of bursty the policy was told

    def deliver(until: float) -> None:
        nonlocal known_cooldown_end
        while pending and pending[0][0] <= until:
            ends, _, provider, sent, outcome, ticket = heapq.heappop(pending)
            policy.observe(provider, outcome, ends, ticket)
            if provider == "bursty" and outcome.retry_after_s is not None:
                known_cooldown_end = max(known_cooldown_end, ends + outcome.retry_after_s)
            if provider == "down" and outcome.ok:
                result.down_ok.append((sent, ends))

    for seq, (t, u, v) in enumerate(calls):
        deliver(t)
        provider = policy.pick(PROVIDERS, t)
        ticket = policy.last_ticket
        outcome = respond(scenario, provider, t, u, v)
        result.sends.append((t, provider))
        result.failed += not outcome.ok
        if provider == "bursty" and t < known_cooldown_end:
            result.into_cooldown += 1
        heapq.heappush(pending, (t + outcome.duration_s, seq, provider, t, outcome, ticket))
    deliver(math.inf)
    return result


def share(result: Result, provider: str, periods: list[tuple[float, float]]) -> tuple[float, int]:
    period = [name for t, name in result.sends if any(start <= t < end for start, end in periods)]
    sent = sum(name == provider for name in period)
    return sent / len(period), sent


def detection_s(result: Result, scenario: Scenario) -> float | None:
    """Mean over ``down``'s bad periods; None when one of them is never detected."""
    found = []
    for start, end in scenario.bad_periods:
        previous, seen = start, None
        for t in [*(t for t, name in result.sends if name == "down" and start <= t < end), end]:
            if t - previous >= DETECTION_PAUSE_S:
                seen = previous - start
                break
            previous = t
        if seen is None:
            return None
        found.append(seen)
    return sum(found) / len(found)


def takeback_s(result: Result, scenario: Scenario) -> float:
    """Mean over ``down``'s recoveries: to the end of the first call it served successfully
    after recovering (the whole good period when it served none in it)."""
    periods = scenario.bad_periods
    waits = []
    for index, (_, recovered) in enumerate(periods):
        following = periods[index + 1][0] if index + 1 < len(periods) else DURATION_S
        ends = [ended for sent, ended in result.down_ok if recovered <= sent < following]
        waits.append(min(ends) - recovered if ends else following - recovered)
    return sum(waits) / len(waits)


# (title, measure, how to print it, the figure compared: lower is better)
Column = tuple[str, Callable[[Result], object], Callable[[object], str], Callable[[object], float]]


def columns(scenario: Scenario, calls: int) -> list[Column]:
    slow_start, slow_end = slow_period()

    def seconds(value: object) -> str:
        return "never" if value is None else f"{value:.2f} s"

    def counted(value: object) -> str:
        assert isinstance(value, tuple)
        return f"{value[0]:.2%} ({value[1]})"

    return [
        ("detection", lambda r: detection_s(r, scenario), seconds, lambda v: math.inf if v is None else v),
        ("down share", lambda r: share(r, "down", scenario.bad_periods), counted, lambda v: v[0]),
        ("into cooldown", lambda r: r.into_cooldown, str, float),
        ("slow share", lambda r: share(r, "slow", [(slow_start, slow_end)]), counted, lambda v: v[0]),
        ("take back", lambda r: takeback_s(r, scenario), seconds, float),
        ("failed", lambda r: r.failed / calls, lambda v: f"{v:.2%}", float),
    ]


Table = dict[str, list[object]]  # policy: its value in each column


def measure(scenario: Scenario, seed: int, calls: list[tuple[float, float, float]]
            ) -> tuple[Table, list[Policy], float]:
    """Replay every policy through one incident: its table, the policies, seconds taken."""
    started = time.perf_counter()
    policies = [make(seed, scenario) for make in POLICIES]
    results = []
    for policy in policies:
        results.append(replay(policy, scenario, calls))
        close = getattr(policy, "close", None)
        if close is not None:
            close()
    cols = columns(scenario, len(calls))
    table = {r.name: [value_of(r) for _, value_of, _, _ in cols] for r in results}
    return table, policies, time.perf_counter() - started


def misses(table: Table, cols: list[Column], variant: str) -> list[str]:
    """The columns where ``variant`` misses its targets.

    One process (ours, ours + probes): a baseline of one process beats it; with probes
    every column counts but round-robin's take back (it never stops calling ``down``, so
    nothing that avoids it can match); without probes take back only has to stay within
    15 s. A fleet of ours (``FLEET_LIMITS``): detection, down share and failed more than its
    limit times ours' (one process); more calls into an announced cooldown than LiteLLM's
    single instance; any column where LiteLLM's shared instances do better."""
    if variant in FLEET_LIMITS:
        return fleet_misses(table, cols, variant)
    found = []
    for i, (title, _, _, figure) in enumerate(cols):
        mine = figure(table[variant][i])
        if title == "take back" and variant == Ours.name:
            if mine > TAKE_BACK_LIMIT_S:
                found.append(f"take back {mine:.1f} s > {TAKE_BACK_LIMIT_S:.0f} s")
            continue
        for name in BASELINES:
            if title == "take back" and name == RoundRobin.name:
                continue
            if figure(table[name][i]) < mine:
                found.append(f"{title} ({name})")
    return found


def alone_of(variant: str) -> str:
    """The one-process row a fleet is compared with: the same policy, probes or not."""
    return OursWithProbes.name if variant in (PROBED_4, PROBED_4X4) else Ours.name


def fleet_misses(table: Table, cols: list[Column], variant: str) -> list[str]:
    limit = FLEET_LIMITS[variant]
    single = alone_of(variant)
    found = []
    for i, (title, _, show, figure) in enumerate(cols):
        mine = figure(table[variant][i])
        if title in ("detection", "down share", "failed"):
            alone = figure(table[single][i])
            if mine > limit * alone:
                found.append(f"{title} {show(table[variant][i])} > {limit:g} x {show(table[single][i])} ({single})")
        if title == "into cooldown" and mine > figure(table[LiteLLMCooldown.name][i]):
            found.append(f"into cooldown {mine:.0f} > {LiteLLMCooldown.name}'s "
                         f"{figure(table[LiteLLMCooldown.name][i]):.0f}")
        if figure(table[LITELLM_16][i]) < mine:
            found.append(f"{title} ({LITELLM_16}: {show(table[LITELLM_16][i])})")
    return found


def run_incident(scenario: Scenario, seed: int, calls: list[tuple[float, float, float]]) -> bool:
    """Replay every policy through one incident and print its table; True when the targets hold."""
    table, policies, elapsed = measure(scenario, seed, calls)
    slow_start, slow_end = slow_period()
    cols = columns(scenario, len(calls))
    print(f"## {scenario.incident}: {len(calls)} calls in {DURATION_S:.0f} s (seed {seed}): {scenario.describe()}; "
          f"slow over {SLOW_CALL_S:.0f} s {slow_start:.1f}-{slow_end:.1f} s; bursty 429s "
          f"{BURST_LENGTH_S:.0f} s of every {BURST_EVERY_S:.0f} s; replayed in {elapsed:.1f} s\n")
    width = max(len(name) for name in table)
    cells = [max(len(title), *(len(show(table[name][i])) for name in table)) for i, (title, _, show, _) in
             enumerate(cols)]
    print(f"| {'policy':<{width}} | " + " | ".join(f"{title:>{cells[i]}}" for i, (title, *_) in
                                                 enumerate(cols)) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (cell + 1) + ":" for cell in cells) + "|")
    for name, values in table.items():
        print(f"| {name:<{width}} | " + " | ".join(f"{show(value):>{cells[i]}}" for i, (value, (_, _, show, _)) in
                                                   enumerate(zip(values, cols, strict=True))) + " |")

    ok = True
    for variant in (Ours.name, OursWithProbes.name):
        print(f"\n{variant} against every baseline of one process, column by column (lower is better):")
        for i, (title, _, _, figure) in enumerate(cols):
            mine = figure(table[variant][i])
            better = [b for b in BASELINES if figure(table[b][i]) < mine]
            equal = [b for b in BASELINES if figure(table[b][i]) == mine]
            verdict = ("worse than " + ", ".join(better) if better else
                       "tied with " + ", ".join(equal) if equal else "better than all")
            print(f"  {title:<13} {verdict}")
        missed = misses(table, cols, variant)
        ok = ok and not missed
        print(f"  targets       {'met' if not missed else 'missed: ' + '; '.join(missed)}")
    for variant, limit in FLEET_LIMITS.items():
        single = alone_of(variant)
        print(f"\n{variant} against {single} (one process; target: detection, down share and failed within "
              f"{limit:g}x), {LiteLLMCooldown.name} (into cooldown) and {LITELLM_16} (every column):")
        for i, (title, _, show, figure) in enumerate(cols):
            mine, alone, rival = (figure(table[name][i]) for name in (variant, single, LITELLM_16))
            ratio = ("same as alone" if mine == alone else "alone: 0" if alone == 0 else
                     f"{mine / alone:.2f}x alone" if math.isfinite(mine / alone) else "never")
            versus = "better than" if mine < rival else "tied with" if mine == rival else "worse than"
            print(f"  {title:<13} {show(table[variant][i]):>14}  {ratio:<13} {versus} {LITELLM_16} "
                  f"({show(table[LITELLM_16][i])})")
        missed = misses(table, cols, variant)
        ok = ok and not missed
        print(f"  targets       {'met' if not missed else 'missed: ' + '; '.join(missed)}")
    policy = policies[1]
    assert isinstance(policy, OursWithProbes)
    print(f"\n{OursWithProbes.name}: {policy.probes_sent} probes; down's circuit (panic picks: {policy.panics}, "
          f"passive: {policies[0].panics}; the first moves of each variant)")
    for variant in policies[:2]:
        assert isinstance(variant, Ours)
        moves = [move for move in variant.moves if move[1] == "down"]
        print(f"  {variant.name}: {len(moves)} moves of down's circuit")
        for at, _, before, after, reason in moves[:8]:
            print(f"    {at:7.1f} s  {before} -> {after}: {reason}")
    print()
    return ok


def run_seeds(seeds: list[int], incidents: list[str], down_start: float) -> None:
    """The targets over many seeds: per incident, each column's mean over the seeds, then
    per variant the seeds that meet the targets and what the others miss."""
    print(f"## targets over seeds {seeds[0]}-{seeds[-1]} (each seed its own traffic)\n")
    for incident in incidents:
        scenario = Scenario(incident, down_start=down_start)
        missed: dict[str, list[str]] = {name: [] for name in (Ours.name, OursWithProbes.name, *FLEET_LIMITS)}
        sums: dict[str, list[float]] = {}
        for seed in seeds:
            calls = traffic(seed)
            cols = columns(scenario, len(calls))
            table, _, _ = measure(scenario, seed, calls)
            for name, values in table.items():
                figures = [figure(value) for value, (_, _, _, figure) in zip(values, cols, strict=True)]
                sums[name] = [a + b for a, b in zip(sums.get(name, [0.0] * len(cols)), figures, strict=True)]
            for variant, found in missed.items():
                if lost := misses(table, cols, variant):
                    found.append(f"seed {seed}: {', '.join(lost)}")
        titles = [title for title, *_ in cols]
        print(f"### {incident}: mean over the seeds (shares in %; 'never' counts as inf)\n")
        print("| policy | " + " | ".join(titles) + " |")
        print("|---|" + "---:|" * len(titles))
        for name, total in sums.items():
            means = [value / len(seeds) for value in total]
            cells = [f"{100 * v:.2f}%" if title in ("down share", "slow share", "failed") else
                     f"{v:.1f}" if title == "into cooldown" else f"{v:.2f} s"
                     for title, v in zip(titles, means, strict=True)]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
        for variant, found in missed.items():
            print(f"  {variant:<28} targets met with {len(seeds) - len(found)} of {len(seeds)} seeds")
            for line in found:
                print(f"      {line}")
        print()


def hot_path_costs(rounds: int = 5, calls: int = 20_000) -> dict[str, float]:
    """Microseconds per call of allow and record on a busy provider (best of ``rounds``)."""
    clock = SimClock()
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)

    def timed(body: Callable[[], object]) -> float:
        best = math.inf
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                clock.now += 0.02
                body()
            best = min(best, (time.perf_counter() - started) / calls * 1e6)
        return best

    def with_permit(status: int) -> Callable[[], object]:
        return lambda: tracker.record("p", duration_s=0.5, status_code=status, permit=tracker.allow("p"))

    costs = {
        "clock step (loop overhead)": timed(lambda: None),
        "allow": timed(lambda: tracker.allow("p")),
        "record, success, no permit": timed(lambda: tracker.record("p", duration_s=0.5, status_code=200)),
        "allow + record(permit=), success": timed(with_permit(200)),
    }
    # Failures trip the circuit now and then: a mix, as a bad minute would give.
    costs["allow + record(permit=), 1 in 2 failed"] = timed(
        lambda: with_permit(503 if clock.now % 0.04 < 0.02 else 200)())
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--incident", choices=INCIDENTS, action="append",
                        help="replay only this incident (repeatable; default all)")
    parser.add_argument("--down-start", type=float, default=60.0, help="when the outage begins (s)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="instead of the tables, check the targets for seeds 1..N")
    args = parser.parse_args()

    incidents = args.incident or list(INCIDENTS)
    if args.seeds:
        run_seeds(list(range(1, args.seeds + 1)), incidents, args.down_start)
        return
    calls = traffic(args.seed)
    for incident in incidents:
        run_incident(Scenario(incident, down_start=args.down_start), args.seed, calls)
    print("## cost per call on this machine (microseconds, best of 5 x 20,000)\n")
    for what, cost in hot_path_costs().items():
        print(f"  {what:<40} {cost:6.2f} us")


if __name__ == "__main__":
    main()
