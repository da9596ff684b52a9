"""Failover under incidents: our HealthTracker against three baselines, on the same traffic.

Six simulated minutes of 50 calls/s (Poisson arrivals, seeded) over four providers:

- ``down`` fails hard for two minutes from 60 s (503s, refused connections, 10 s
  timeouts), then recovers (``--down-start`` moves the incident);
- ``slow`` gets slow: its latency climbs from 0.8 s to 20 s between 200 s and 250 s,
  stays there until 300 s and is back to normal at 310 s;
- ``bursty`` answers every call with a 429 for 10 s out of every 40 s, its ``Retry-After``
  saying how long the burst has left;
- ``steady`` is fine throughout.

Every call draws its random numbers before a provider is picked, so each policy meets
the same traffic. A call's outcome reaches the policy when the call ends (a timeout
after 10 s, a slow answer after 20 s), as in a gateway. Policies, each a small class
with ``pick(candidates, now)`` and ``observe(provider, outcome, now)``:

- ours: ``HealthTracker.choose`` then ``allow`` down the failover order (and in panic the
  choice anyway), every outcome fed back through ``record``;
- round-robin;
- Envoy-like outlier detection: 5 consecutive failures (5xx, timeouts, refused
  connections) eject a host for 30 s x its ejections (at most 300 s); no half-open, the
  host is back when its ejection ends; at most one host ejected at a time (Envoy's
  ``max_ejection_percent`` of 10% allows one);
- LiteLLM's router cooldowns: 5 s after a 429, or after a failure when more than 50% of
  the deployment's calls in the current minute failed and it had at least 5; random
  choice among deployments not cooling down (its default "simple-shuffle").

Columns:

- detection: seconds from the start of ``down``'s incident to the first avoided call:
  the send time of the last call routed to ``down`` before the first pause of at least
  1 s in its calls during the incident (at 50 calls/s over four providers a pause that
  long does not happen by chance; "never" when there is none);
- down share: calls routed to ``down`` during its incident / all calls in that period
  (the count in brackets);
- into cooldown: calls routed to ``bursty`` before the end of a cooldown it had already
  announced (a 429 whose ``Retry-After`` the policy had received and which had not run out);
- slow share: calls routed to ``slow`` while its latency is over 10 s / all calls then
  (count in brackets);
- take back: seconds from ``down``'s recovery to the end of the first call it serves
  successfully afterwards;
- failed: all calls that failed, timed out or were throttled, of the whole run.

    .venv/bin/python benchmarks/failover_incidents.py [--seed 7] [--down-start 60]

The default start, on a minute boundary, is LiteLLM's best case: its failure share is
counted per calendar minute, so an incident that begins mid-minute has to outweigh the
minute's earlier successes first.

Targets for ours: detection within 5 s, under 2% of calls to ``down``, no call into a
known cooldown, taken back within the running cooldown plus its trial calls, and better
than every baseline in each column.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.scoring import HealthTracker

PROVIDERS = ("down", "slow", "bursty", "steady")
RATE = 50.0  # calls per second
DURATION_S = 360.0
DOWN_LENGTH_S = 120.0
SLOW_RAMP = (200.0, 250.0, 300.0, 310.0)  # starts climbing, at its peak, starts falling, normal
SLOW_BASE_S, SLOW_PEAK_S = 0.8, 20.0
SLOW_CALL_S = 10.0
BURST_EVERY_S, BURST_LENGTH_S, BURST_FIRST_S = 40.0, 10.0, 20.0
TIMEOUT_S = 10.0
DETECTION_PAUSE_S = 1.0
WALL_START = 1_700_000_000.0


# --- the traffic -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    down_start: float = 60.0

    @property
    def down_end(self) -> float:
        return self.down_start + DOWN_LENGTH_S


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
    if provider == "down" and scenario.down_start <= t < scenario.down_end:
        if u < 0.6:
            return Outcome(0.05 + 0.2 * v, status_code=503)
        if u < 0.8:
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

    def pick(self, candidates: tuple[str, ...], now: float) -> str: ...

    def observe(self, provider: str, outcome: Outcome, now: float) -> None: ...


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_START + self.now


class Ours:
    """HealthTracker.choose, then allow() down the failover order; outcomes to record()."""

    name = "ours (HealthTracker)"

    def __init__(self, seed: int) -> None:
        self.clock = SimClock()
        self.moves: list[tuple[float, str, str, str, str]] = []
        self.tracker = HealthTracker(clock=self.clock, wall_clock=self.clock.wall,
                                     on_transition=lambda *move: self.moves.append((self.clock.now, *move)))
        self.panics = 0

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        self.clock.now = now
        choice = self.tracker.choose(candidates)
        for provider in choice.order:
            if self.tracker.allow(provider):
                break
        else:  # every circuit shut: panic, call the least bad one anyway
            provider = choice.provider
        self.panics += choice.panic
        self.tracker.start(provider)
        return provider

    def observe(self, provider: str, outcome: Outcome, now: float) -> None:
        self.clock.now = now
        self.tracker.record(provider, duration_s=outcome.duration_s, status_code=outcome.status_code,
                            error=outcome.error, headers=outcome.headers)


class RoundRobin:
    name = "round-robin"

    def __init__(self, seed: int) -> None:
        self.turn = itertools.count()

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        return candidates[next(self.turn) % len(candidates)]

    def observe(self, provider: str, outcome: Outcome, now: float) -> None:
        pass


class EnvoyConsecutive5xx:
    """Envoy outlier detection's consecutive_5xx (5), base_ejection_time 30 s x ejections,
    max_ejection_time 300 s, max_ejection_percent 10% (at least one host); round-robin.

    Simplified in Envoy's favour: an ejected host comes back the moment its ejection ends
    (Envoy waits for the next 10 s sweep)."""

    name = "Envoy consecutive 5xx"

    def __init__(self, seed: int) -> None:
        self.turn = itertools.count()
        self.consecutive: dict[str, int] = defaultdict(int)
        self.ejections: dict[str, int] = defaultdict(int)
        self.ejected_until: dict[str, float] = defaultdict(float)

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        healthy = [name for name in candidates if self.ejected_until[name] <= now] or list(candidates)
        return healthy[next(self.turn) % len(healthy)]

    def observe(self, provider: str, outcome: Outcome, now: float) -> None:
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

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed + 1)
        self.cooldown_until: dict[str, float] = defaultdict(float)
        self.minute: dict[str, tuple[int, int, int]] = {}  # provider: (minute, successes, failures)

    def pick(self, candidates: tuple[str, ...], now: float) -> str:
        healthy = [name for name in candidates if self.cooldown_until[name] <= now] or list(candidates)
        return self.rng.choice(healthy)

    def observe(self, provider: str, outcome: Outcome, now: float) -> None:
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


POLICIES: tuple[Callable[[int], Policy], ...] = (Ours, RoundRobin, EnvoyConsecutive5xx, LiteLLMCooldown)


# --- the replay and its measures ---------------------------------------------------------------


@dataclass
class Result:
    name: str
    sends: list[tuple[float, str]] = field(default_factory=list)
    into_cooldown: int = 0
    failed: int = 0
    takeback_s: float | None = None


def replay(policy: Policy, scenario: Scenario, calls: list[tuple[float, float, float]]) -> Result:
    """Send every call through ``policy``; outcomes reach it when each call ends."""
    result = Result(policy.name)
    pending: list[tuple[float, int, str, float, Outcome]] = []  # (ends, seq, provider, sent, outcome)
    known_cooldown_end = -math.inf  # the latest Retry-After deadline of bursty the policy was told

    def deliver(until: float) -> None:
        nonlocal known_cooldown_end
        while pending and pending[0][0] <= until:
            ends, _, provider, sent, outcome = heapq.heappop(pending)
            policy.observe(provider, outcome, ends)
            if provider == "bursty" and outcome.retry_after_s is not None:
                known_cooldown_end = max(known_cooldown_end, ends + outcome.retry_after_s)
            if provider == "down" and outcome.ok and sent >= scenario.down_end and result.takeback_s is None:
                result.takeback_s = ends - scenario.down_end

    for seq, (t, u, v) in enumerate(calls):
        deliver(t)
        provider = policy.pick(PROVIDERS, t)
        outcome = respond(scenario, provider, t, u, v)
        result.sends.append((t, provider))
        result.failed += not outcome.ok
        if provider == "bursty" and t < known_cooldown_end:
            result.into_cooldown += 1
        heapq.heappush(pending, (t + outcome.duration_s, seq, provider, t, outcome))
    deliver(math.inf)
    return result


def share(result: Result, provider: str, start: float, end: float) -> tuple[float, int]:
    period = [name for t, name in result.sends if start <= t < end]
    sent = sum(name == provider for name in period)
    return sent / len(period), sent


def detection_s(result: Result, scenario: Scenario) -> float | None:
    start, end = scenario.down_start, scenario.down_end
    previous = start
    for t in [*(t for t, name in result.sends if name == "down" and start <= t < end), end]:
        if t - previous >= DETECTION_PAUSE_S:
            return previous - start
        previous = t
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--down-start", type=float, default=60.0, help="when down's incident begins (s)")
    args = parser.parse_args()
    scenario = Scenario(down_start=args.down_start)

    calls = traffic(args.seed)
    slow_start, slow_end = slow_period()
    started = time.perf_counter()
    policies = [make(args.seed) for make in POLICIES]
    results = [replay(policy, scenario, calls) for policy in policies]
    elapsed = time.perf_counter() - started

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    def counted(value: tuple[float, int]) -> str:
        return f"{value[0]:.2%} ({value[1]})"

    # (title, measure, how to print it, the figure compared: lower is better)
    columns: list[tuple[str, Callable[[Result], object], Callable[[object], str], Callable[[object], float]]] = [
        ("detection", lambda r: detection_s(r, scenario), seconds, lambda v: math.inf if v is None else v),
        ("down share", lambda r: share(r, "down", scenario.down_start, scenario.down_end), counted, lambda v: v[0]),
        ("into cooldown", lambda r: r.into_cooldown, str, float),
        ("slow share", lambda r: share(r, "slow", slow_start, slow_end), counted, lambda v: v[0]),
        ("take back", lambda r: r.takeback_s, seconds, lambda v: math.inf if v is None else v),
        ("failed", lambda r: r.failed / len(calls), lambda v: f"{v:.2%}", float),
    ]
    print(f"{len(calls)} calls in {DURATION_S:.0f} s (seed {args.seed}): down fails {scenario.down_start:.0f}-"
          f"{scenario.down_end:.0f} s, slow over {SLOW_CALL_S:.0f} s {slow_start:.1f}-{slow_end:.1f} s, "
          f"bursty 429s {BURST_LENGTH_S:.0f} s of every {BURST_EVERY_S:.0f} s; replayed in {elapsed:.1f} s\n")
    table = {r.name: [measure(r) for _, measure, _, _ in columns] for r in results}
    width = max(len(name) for name in table)
    cells = [max(len(title), *(len(show(table[name][i])) for name in table)) for i, (title, _, show, _) in
             enumerate(columns)]
    print(f"| {'policy':<{width}} | " + " | ".join(f"{title:>{cells[i]}}" for i, (title, *_) in
                                                 enumerate(columns)) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (cell + 1) + ":" for cell in cells) + "|")
    for name, values in table.items():
        print(f"| {name:<{width}} | " + " | ".join(f"{show(value):>{cells[i]}}" for i, (value, (_, _, show, _)) in
                                                   enumerate(zip(values, columns))) + " |")

    ours, *baselines = results
    print("\nours against every baseline, column by column (lower is better):")
    for i, (title, _, _, figure) in enumerate(columns):
        mine = figure(table[ours.name][i])
        better = [b.name for b in baselines if figure(table[b.name][i]) < mine]
        equal = [b.name for b in baselines if figure(table[b.name][i]) == mine]
        verdict = ("worse than " + ", ".join(better) if better else
                   "tied with " + ", ".join(equal) if equal else "better than all")
        print(f"  {title:<13} {verdict}")

    policy = policies[0]
    assert isinstance(policy, Ours)
    print(f"\nours: down's circuit (panic picks: {policy.panics})")
    for at, provider, before, after, reason in policy.moves:
        if provider == "down":
            print(f"  {at:7.1f} s  {before} -> {after}: {reason}")
    back = [at for at, provider, _, after, _ in policy.moves
            if provider == "down" and after == "half_open" and at >= scenario.down_end]
    if back and ours.takeback_s is not None:
        print(f"  recovered at {scenario.down_end:.0f} s; the cooldown then running ended at {back[0]:.1f} s "
              f"(+{back[0] - scenario.down_end:.1f} s); first success +{ours.takeback_s:.1f} s")


if __name__ == "__main__":
    main()
