"""The health tracker the routing engine reads: scores, circuits, throttles, failover.

Fed by every upstream call (``record``, from the recording helpers) and by active probes
(``record_probe``); read by ``allow`` (may a call go now), ``status``/``snapshot`` (the
scores and why) and ``choose`` (the failover order). Time comes from an injectable
monotonic clock and an injectable wall clock (for Retry-After dates and the reasons'
times), so incidents replay without sleeping.

``record`` is on the gateway's hot path: it classifies, appends to a deque and updates
the breaker; every score is computed lazily when someone reads it.

Several processes act as one tracker when each tells the others what it records
(``share_outcomes``, ``take_outcomes``) and replays theirs (``apply``), and when their
half-open trials are counted together (``trial_gate``): ``app.scoring.sharing`` does both.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from app.scoring.breaker import Breaker, Circuit, Permit, Transition
from app.scoring.config import HealthConfig
from app.scoring.events import CALL, GRANTED, PROBE, VOIDED, SharedOutcome
from app.scoring.outcome import ERRORS, SCORED, Outcome, classify, retry_hint
from app.scoring.score import apdex_zone, health_score


class State(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    provider: str
    score: float
    availability: float
    error_rate: float
    latency_score: float
    state: State
    circuit: Circuit
    calls: int
    rate_limited_until: datetime | None
    reasons: list[str]
    in_flight: int = 0
    slow_call_rate: float = 0.0
    credential_errors: int = 0
    not_found_errors: int = 0
    probes: int = 0


@dataclass(frozen=True, slots=True)
class Choice:
    provider: str
    order: list[str]
    panic: bool


#: Outcomes kept for the other processes between two rounds of sharing: bounds the memory
#: if the sharing thread stalls (a round every 25 ms takes a few hundred at most).
MAX_UNSHARED = 100_000

#: Other processes' trials out that one provider keeps count of (a bound against garbage).
MAX_REMOTE_TRIALS = 64
#: A verdict is matched to the announced trial sent within this many seconds of its own
#: send time: across hosts each batch moves times by its own clock offset.
SAME_SEND_S = 0.05

#: A retrial claimed on the trial gate holds it this long: time enough for the claimant's
#: announcement of the call to reach the host's other workers.
RETRIAL_CLAIM_S = 1.0

#: Called on every breaker move: provider, from state, to state, reason.
TransitionHook = Callable[[str, str, str, str], None]


class TrialGate(Protocol):
    """Half-open trial permits counted across processes: at most ``trials_at_once`` out,
    whichever process holds them. Never blocks: a gate that cannot decide at once refuses."""

    def acquire(self, provider: str, issued: float, deadline: float, limit: int) -> bool: ...

    def release(self, provider: str, issued: float) -> None: ...


@dataclass(slots=True)
class _Call:
    at: float
    failed: bool
    reached: bool
    zone: str  # Apdex: satisfied, tolerating, frustrated (failures are frustrated)
    slow: bool


@dataclass(slots=True)
class _Window:
    """Counts over the calls and probes in the window, kept as they enter and leave, so
    reading a score costs O(1) however busy the provider is."""

    calls: deque[_Call] = field(default_factory=deque)
    probes: deque[tuple[float, bool]] = field(default_factory=deque)
    failed: int = 0
    reached: int = 0
    satisfied: int = 0
    tolerating: int = 0
    slow: int = 0
    probes_ok: int = 0

    def add(self, call: _Call) -> None:
        self.calls.append(call)
        self._count(call, 1)

    def add_probe(self, at: float, ok: bool) -> None:
        self.probes.append((at, ok))
        self.probes_ok += ok

    def _count(self, call: _Call, sign: int) -> None:
        self.failed += sign * call.failed
        self.reached += sign * call.reached
        self.satisfied += sign * (call.zone == "satisfied")
        self.tolerating += sign * (call.zone == "tolerating")
        self.slow += sign * call.slow

    def prune(self, horizon: float) -> None:
        calls, probes = self.calls, self.probes
        while calls and calls[0].at < horizon:
            self._count(calls.popleft(), -1)
        while probes and probes[0][0] < horizon:
            self.probes_ok -= probes.popleft()[1]


#: Passes a probe run keeps, the latest: several seconds of probes from every host at the
#: 1 s interval.
MAX_RUN_PASSES = 32


@dataclass(slots=True)
class _ProbeRun:
    """The unbroken run of passed probes, in the order the probes were *sent*: a failed
    probe ends the run of the passes sent before it, not of those sent after it. A probe
    that times out reports its failure 5 s after its send, when the probes sent behind it
    may have passed already (a provider that has just recovered); the breaker orders a
    run of failed calls the same way."""

    failed_sent: float = -math.inf  # the send of the latest failed probe
    sends: list[float] = field(default_factory=list)  # sends of the passes since, in order
    heard: list[float] = field(default_factory=list)  # when this process heard of each
    #: For each pass, when this process had heard of two of the passes from it on (inf:
    #: fewer than two): kept on every probe, so ``choose()`` reads it in one lookup.
    second_heard: list[float] = field(default_factory=list)

    def failed(self, sent: float) -> None:
        if sent >= self.failed_sent:
            self.failed_sent = sent
            keep = bisect.bisect_right(self.sends, sent)
            del self.sends[:keep], self.heard[:keep], self.second_heard[:keep]

    def passed(self, sent: float, heard: float) -> None:
        """A pass sent at ``sent`` that this process heard of at ``heard`` (its own at
        once, another's a channel's lag later)."""
        if sent < self.failed_sent:
            return
        index = bisect.bisect_right(self.sends, sent)  # sent with the failure: in the order they came
        self.sends.insert(index, sent)
        self.heard.insert(index, heard)
        if len(self.sends) > MAX_RUN_PASSES:  # the run reads shorter than it is, never longer
            del self.sends[0], self.heard[0]
        first = second = math.inf
        second_heard = []
        for at in reversed(self.heard):
            if at < first:
                first, second = at, first
            elif at < second:
                second = at
            second_heard.append(second)
        second_heard.reverse()
        self.second_heard = second_heard

    def first_since(self, at: float) -> float:
        """The send of the run's first pass sent at ``at`` or later (inf: none)."""
        index = bisect.bisect_left(self.sends, at)
        return self.sends[index] if index < len(self.sends) else math.inf

    def two_heard_since(self, at: float) -> float:
        """When this process had heard of two passes in a row sent at ``at`` or later
        (inf: not yet)."""
        index = bisect.bisect_left(self.sends, at)
        return self.second_heard[index] if index < len(self.sends) else math.inf


@dataclass(slots=True)
class _Provider:
    breaker: Breaker
    window: _Window = field(default_factory=_Window)
    credential: deque[float] = field(default_factory=deque)
    not_found: deque[float] = field(default_factory=deque)
    throttled_until: float = -math.inf
    throttle_reason: str = ""
    throttle_backoffs: int = 0  # 429s in a row without a hint
    quota_until: float = -math.inf
    quota_reason: str = ""
    in_flight: int = 0
    last_granted: float = -math.inf  # when a call last went (allow, start) or ended
    probe_run: _ProbeRun = field(default_factory=_ProbeRun)
    last_probe: float = -math.inf  # when a probe last ended
    #: Other processes' trial calls out, as they announced them: sent -> held until.
    remote_trials: dict[float, float] = field(default_factory=dict)
    #: The place this process holds at the trial gate after its trial failed (its issue
    #: time), until the next trial is due; given back early when a probe ends the cooldown.
    gate_hold: float | None = None
    #: When the place of a trial last came free in every process at about the same moment
    #: (a trial's verdict, its own or another's; a probe that overtook the trials out; an
    #: announcement whose hold ran out): the hosts take their turns for the next trial from
    #: then, as for the first of a half-open period.
    trial_freed_at: float = -math.inf
    ewma_s: float | None = None
    ewma_at: float = 0.0


def _trials_since(breaker: Breaker) -> float:
    """Since when another process's trial belongs to the circuit's current half-open
    period. A circuit that fails on probation goes half-open at each process's own failed
    call, not at one moment for all: any trial sent since it last closed is of that period,
    though it may come before this process's own move."""
    if breaker.state is Circuit.HALF_OPEN and breaker.opened_at < breaker.closed_at:
        return breaker.closed_at
    return _half_open_start(breaker)


# Module-level names for the members record() tests on every call: a global is read in
# one step, an enum member through its class in two.
_SCORED, _ERRORS = SCORED, ERRORS
_UNREACHED, _THROTTLED, _QUOTA = Outcome.UNREACHED, Outcome.THROTTLED, Outcome.QUOTA
_CREDENTIAL, _NOT_FOUND = Outcome.CREDENTIAL, Outcome.NOT_FOUND
_CLOSED = Circuit.CLOSED


def _half_open_start(breaker: Breaker) -> float:
    """When the circuit's current (or due) half-open period began for every process: a
    circuit moves to half-open at the first call after its cooldown, a moment of each
    process's own, but the cooldown ends at the same time in all (a probe's success, or a
    failure on probation, moves it at once: then its own moment)."""
    if breaker.state is Circuit.OPEN:
        return breaker.next_trial_at
    if breaker.next_trial_at - breaker.cooldown_s > breaker.closed_at:  # tripped since it last closed
        return min(breaker.half_open_since, breaker.next_trial_at)
    return breaker.half_open_since


def _describe(outcome: Outcome, status_code: int | None, error: BaseException | str | None) -> str:
    """A failed call in a few words, for the reason of the trip it may cause."""
    if isinstance(error, str):
        return error
    if error is not None:
        return type(error).__name__
    return outcome.value if status_code is None else f"{outcome.value} {status_code}"


class HealthTracker:
    """Provider health for failover. ``get_tracker()`` is the app's own instance."""

    def __init__(
        self,
        config: HealthConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or HealthConfig()
        self.clock = clock
        self.wall_clock = wall_clock
        self._providers: dict[str, _Provider] = {}
        self._lock = threading.Lock()
        #: (hook, called for moves caused by other processes' outcomes too). Replaced, never
        #: changed in place: _notify reads it without the lock.
        self._listeners: tuple[tuple[TransitionHook, bool], ...] = ()
        #: What this tracker recorded since ``take_outcomes``, for the other processes
        #: (None: not shared).
        self._outbox: list[SharedOutcome] | None = None
        #: Counts half-open trials with the other processes' (None: this process alone).
        self.trial_gate: TrialGate | None = None
        #: provider -> when this process claimed its current probe on the gate (claim_probe).
        self._probe_claims: dict[str, float] = {}
        #: How long past the moment a provider's trial (cycle: its breaker's trips) or
        #: retrial (cycle -1) is due this process waits before sending one itself: hosts
        #: that share through a slower channel take turns, so the first one's announcement
        #: reaches the others before their turn comes (None: no wait).
        self.turn: Callable[[str, int], float] | None = None

    # --- its listeners ------------------------------------------------------------------

    def add_listener(self, hook: TransitionHook, *, remote: bool = True) -> None:
        """Have ``hook(provider, from_state, to_state, reason)`` called on every breaker
        move of this tracker, in order, once the move is made and the tracker's lock
        released (a hook may read the tracker). A hook that raises is skipped: metrics must
        not break routing. Adding a hook twice adds it once. With ``remote=False`` it is not
        called for the moves that other processes' outcomes cause (``apply``): every process
        of a fleet makes those moves, and a counter summed over them would count each N times."""
        with self._lock:
            if all(listener != hook for listener, _ in self._listeners):
                self._listeners = (*self._listeners, (hook, remote))

    def remove_listener(self, hook: TransitionHook) -> None:
        """Stop calling ``hook``; a hook never added is ignored."""
        with self._lock:
            self._listeners = tuple(entry for entry in self._listeners if entry[0] != hook)

    # --- sharing with other processes -----------------------------------------------------

    def share_outcomes(self, enabled: bool = True) -> None:
        """Keep what this tracker records for ``take_outcomes`` from now on (or no longer)."""
        with self._lock:
            if not enabled:
                self._outbox = None
            elif self._outbox is None:
                self._outbox = []

    def take_outcomes(self) -> list[SharedOutcome]:
        """What this tracker recorded since the last call (for the other processes)."""
        with self._lock:
            taken = self._outbox
            if not taken:
                return []
            self._outbox = []
        return taken

    def apply(self, outcomes: Iterable[SharedOutcome]) -> None:
        """Replay other processes' outcomes through this tracker's rules, as its own.

        A call counts for the breaker in the period it was admitted in, as a permit's
        would: a call admitted before this circuit's latest move says nothing of it now; a
        trial's verdict counts while this circuit is half-open since before the trial was
        sent. The load (calls in flight) stays each process's own. Moves it causes are
        notified with ``remote`` listeners only. Outcomes are not passed on again."""
        for item in outcomes:
            with self._lock:
                now = self.clock()
                state = self._provider(item.provider)
                if item.kind == PROBE:
                    moves = self._account_probe(state, item.provider, now, item.outcome == "success", item.issued)
                else:
                    moves = self._apply_call(state, item, now)
                self._prune(state, now)
            self._notify(item.provider, moves, remote=True)

    def _apply_call(self, state: _Provider, item: SharedOutcome, now: float) -> list[Transition]:
        if item.outcome == GRANTED:
            self._apply_grant(state, item, now)
            return []
        if item.outcome == VOIDED:
            if self._settle_remote_trial(state, item.issued):
                state.trial_freed_at = now  # the door is free in every process at about this moment
            return []
        try:
            outcome = Outcome(item.outcome)
        except ValueError:
            return []  # an outcome this version does not know: no verdict
        if item.trial:
            # Its announcement is over whatever the outcome: a trial that ends without a
            # verdict (429, 401/403, 404) gave its place back in its own process too.
            self._settle_remote_trial(state, item.issued)
            state.trial_freed_at = now
        # A call went: the retrial of a provider ranked out is due once per fleet, not once per process.
        state.last_granted = max(state.last_granted, min(now, item.at))
        breaker = state.breaker
        if outcome not in _SCORED:  # no verdict; its trial permit went back where it was held
            if item.throttled_until > state.throttled_until:
                state.throttled_until, state.throttle_reason = item.throttled_until, item.throttle_source
            if item.quota_until > state.quota_until:
                state.quota_until, state.quota_reason = item.quota_until, item.quota_reason
            if outcome is _CREDENTIAL:
                state.credential.append(now)
            elif outcome is _NOT_FOUND:
                state.not_found.append(now)
            return []
        # Judged when its process recorded it (never before this circuit's latest move, never
        # ahead of this clock): every process then trips, cools down and goes half-open at
        # the moments the recorder did, whatever the channel's lag.
        at = min(now, max(item.at, breaker.since))
        counts = False
        if item.trial:
            counts = breaker.effective_state(now) is Circuit.HALF_OPEN and item.issued >= _trials_since(breaker)
            permit: Permit | None = None if counts else Permit(item.provider, False, -1, item.issued)
        else:
            period = breaker.period if breaker.state is _CLOSED and item.issued >= breaker.since else -1
            permit = Permit(item.provider, True, period, item.issued)
        moves = self._account_call(state, item.provider, now, outcome, item.duration_s, item.latency_s, item.what,
                                   permit, at)[1]
        if counts and moves and moves[-1].to_state is Circuit.OPEN:
            # A failed trial: the next one is due a cooldown after it was sent, as in its process.
            breaker.next_trial_at = max(at, item.issued + breaker.cooldown_s)
        elif item.trial and not counts and outcome in _ERRORS and breaker.state is Circuit.OPEN:
            # Another process's trial failed while this circuit is still open (its cooldown
            # ended first): the provider is still down, so this one waits a cooldown from that
            # trial too, rather than send a trial of its own into it.
            breaker.next_trial_at = max(breaker.next_trial_at, item.issued + breaker.cooldown_s)
        return moves

    def _apply_grant(self, state: _Provider, item: SharedOutcome, now: float) -> None:
        """Another process sent a trial or a retrial call: this one holds off its own."""
        state.last_granted = max(state.last_granted, min(now, item.issued))
        if not item.trial or state.breaker.effective_state(now) is _CLOSED:
            return
        remote = state.remote_trials
        if len(remote) >= MAX_REMOTE_TRIALS:
            self._prune_remote_trials(state, now)
        if len(remote) < MAX_REMOTE_TRIALS:
            # Held until its verdict comes, at most a cooldown: a replica that died
            # holding one keeps the others' trials waiting no longer than that.
            hold = min(self.config.trial_timeout_s, self.config.max_cooldown_s)
            remote[item.issued] = item.issued + hold

    @staticmethod
    def _settle_remote_trial(state: _Provider, sent: float) -> bool:
        """A trial's verdict came: the announcement of that trial no longer holds. Whether
        it still held."""
        remote = state.remote_trials
        if remote:
            closest = min(remote, key=lambda issued: abs(issued - sent))
            if abs(closest - sent) <= SAME_SEND_S:
                del remote[closest]
                return True
        return False

    @staticmethod
    def _prune_remote_trials(state: _Provider, now: float) -> int:
        """Forget the announced trials whose hold is over; the count of those still out.
        A hold runs out at the same moment in every process: the next trial takes turns
        from then, as from a verdict."""
        remote = state.remote_trials
        for issued, until in [(issued, until) for issued, until in remote.items() if until <= now]:
            del remote[issued]
            state.trial_freed_at = max(state.trial_freed_at, until)
        return len(remote)

    def _held_off(self, state: _Provider, provider: str, now: float) -> bool:
        """Whether a trial due now must be left to another process: this host's turn has
        not come, or other processes' announced trials hold every place."""
        breaker = state.breaker
        if breaker.effective_state(now) is not Circuit.HALF_OPEN:
            return False
        held = self._prune_remote_trials(state, now) if state.remote_trials else 0
        turn = self.turn
        if turn is not None:
            # Every host hears a trial's verdict at about the same moment, so the next trial
            # takes turns from then too, in the same order, or each host would send one at once.
            start = max(_half_open_start(breaker), state.trial_freed_at)
            if now < start + turn(provider, breaker.trips):
                return True
        return breaker.trials_out(now) + held >= self.config.trials_at_once

    def _announce(self, provider: str, now: float, trial: bool) -> None:
        """Tell the other processes a trial (or a call after a pause) is going now (lock held)."""
        outbox = self._outbox
        if outbox is not None and len(outbox) < MAX_UNSHARED:
            outbox.append(SharedOutcome(CALL, provider, GRANTED, now, now, trial))
    # --- feeding it ---------------------------------------------------------------------

    def _provider(self, name: str) -> _Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = _Provider(Breaker(self.config))
        return provider

    def _known(self, name: str) -> _Provider:
        """The provider's state, or a fresh one that is not kept: a question about a name
        never seen must not create state (nor a series of the provider gauges)."""
        return self._providers.get(name) or _Provider(Breaker(self.config))

    def start(self, provider: str) -> None:
        """A call to ``provider`` begins (its ``record`` ends it): the load for ``choose``."""
        now = self.clock()
        with self._lock:
            state = self._provider(provider)
            state.in_flight += 1
            state.last_granted = now

    def begin(self, provider: str) -> Permit:
        """``allow`` and ``start`` in one step: the recording helpers call it as a call begins."""
        now = self.clock()
        with self._lock:
            state = self._providers.get(provider) or self._provider(provider)
            state.in_flight += 1
            permit, moves = self._grant(state, provider, now)
        if moves:
            self._notify(provider, moves)
        return permit

    def record(
        self,
        provider: str,
        *,
        duration_s: float,
        status_code: int | None = None,
        error: BaseException | str | None = None,
        ttft_s: float | None = None,
        retry_after_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        error_code: str | None = None,
        permit: Permit | None = None,
    ) -> str | None:
        """Account one finished call. Returns its Apdex zone when it counts for the score
        (satisfied, tolerating, frustrated), None when it does not (429, 401/403, 404).

        ``permit`` is the one ``allow`` gave the call: its outcome then counts for the
        breaker only in the period the call was admitted in, and only once. Without one the
        call counts as in the breaker's current state (a caller that never asks)."""
        if permit is not None and permit.provider != provider:
            permit = None  # another provider's permit says nothing about this call
        outcome = classify(status_code, error, error_code)
        now = self.clock()
        zone: str | None = None
        with self._lock:
            if permit is not None and permit.returned:
                return None  # this call was recorded already: never counted twice
            state = self._provider(provider)
            state.last_granted = now
            if state.in_flight > 0:
                state.in_flight -= 1
            trial = permit is not None and permit.trial and not permit.void
            if trial:
                state.trial_freed_at = now
            if outcome in _SCORED:
                latency = ttft_s if ttft_s is not None else duration_s
                # Only a failure can trip the circuit and needs words for its reason.
                what = _describe(outcome, status_code, error) if outcome in _ERRORS else ""
                zone, moves = self._account_call(state, provider, now, outcome, duration_s, latency, what, permit)
            else:
                what = ""
                latency = duration_s
                moves = state.breaker.release(now, permit)  # not scored: a trial permit comes back
                if outcome is _THROTTLED:
                    self._throttle(state, now, headers, retry_after_s)
                elif outcome is _QUOTA:
                    state.quota_until = max(state.quota_until, now + self.config.quota_cooldown_s)
                    state.quota_reason = f"quota exhausted ({error_code})"
                elif outcome is _CREDENTIAL:
                    state.credential.append(now)
                elif outcome is _NOT_FOUND:
                    state.not_found.append(now)
            self._prune(state, now)
            outbox = self._outbox
            if outbox is not None and len(outbox) < MAX_UNSHARED:
                outbox.append(SharedOutcome(
                    CALL, provider, outcome.value, now, permit.issued if permit is not None else now, trial,
                    duration_s, latency, what, state.throttled_until, state.throttle_reason, state.quota_until,
                    state.quota_reason))
                if permit is not None and permit.trial and not trial:
                    outbox.append(SharedOutcome(CALL, provider, VOIDED, now, permit.issued, True))
        gate = self.trial_gate
        if permit is not None and permit.trial and gate is not None:
            gate.release(provider, permit.issued)  # voided or not: its place comes back
            if trial and moves and moves[-1].to_state is Circuit.OPEN:
                # It failed and reopened the circuit: its place stays taken until the next
                # trial is due, or another process could send one before this verdict reaches it.
                if gate.acquire(provider, now, state.breaker.next_trial_at, self.config.trials_at_once):
                    state.gate_hold = now
        if moves:
            self._notify(provider, moves)
        return zone

    def _account_call(self, state: _Provider, provider: str, now: float, outcome: Outcome, duration_s: float,
                      latency: float, what: str, permit: Permit | None,
                      verdict_at: float | None = None) -> tuple[str, list[Transition]]:
        """Count one scored call (lock held): its window, its latency and its verdict (given
        to the breaker at ``verdict_at``, default ``now``). Returns its Apdex zone and the
        breaker's moves."""
        failed = outcome in _ERRORS  # the caller's own 4xx is a success for the provider
        threshold = self.config.apdex_threshold(provider)
        if failed:
            # A fast error is no fast answer: it costs the load balancer as a
            # frustrated call would (4T), or a provider failing in 50 ms would
            # look the least loaded and draw more calls than the healthy ones.
            self._update_ewma(state, now, max(duration_s, 4 * threshold))
            latency = math.inf
        else:
            state.throttle_backoffs = 0
            state.quota_until = -math.inf  # it answered: the quota is back
            self._update_ewma(state, now, latency)
        zone = apdex_zone(latency, threshold)
        state.window.add(_Call(now, failed, outcome is not _UNREACHED, zone,
                               not failed and latency > self.config.slow_call_s))
        moves = state.breaker.record(now if verdict_at is None else verdict_at, failed, what, permit)
        if moves and state.remote_trials and moves[-1].to_state is not Circuit.HALF_OPEN:
            state.remote_trials.clear()  # their half-open period is over
        if moves and moves[-1].to_state is _CLOSED:
            # Its trial calls proved it back: the score starts afresh from them, or the
            # failures of the outage would keep it ranked last, and unused, for a window.
            state.window.prune(state.breaker.half_open_since)
        return zone, moves

    def _throttle(self, state: _Provider, now: float, headers: Mapping[str, str] | None,
                  retry_after_s: float | None) -> None:
        hint = retry_hint(headers, retry_after_s, self.wall_clock())
        if hint is not None:
            wait, source = hint
        else:
            wait, source = 2.0**state.throttle_backoffs, "backoff (no hint)"
            state.throttle_backoffs += 1
        wait = min(max(wait, self.config.throttle_min_s), self.config.throttle_max_s)
        until = now + wait
        if until > state.throttled_until:  # a shorter, later hint never cuts a cooldown short
            state.throttled_until = until
            state.throttle_reason = source

    def _update_ewma(self, state: _Provider, now: float, latency: float) -> None:
        # Peak EWMA (Finagle, Linkerd): jump to a slower sample at once, decay towards
        # faster ones with time constant tau.
        if state.ewma_s is None or latency > state.ewma_s:
            state.ewma_s = latency
        else:
            weight = math.exp(-(now - state.ewma_at) / self.config.ewma_tau_s)
            state.ewma_s = state.ewma_s * weight + latency * (1 - weight)
        state.ewma_at = now

    def _ewma_now(self, state: _Provider, now: float) -> float:
        """The peak EWMA decayed towards zero for the time without a sample, as Finagle's
        PeakEwma reads it: a provider left idle after a slow or failed call is tried again."""
        if state.ewma_s is None:
            return 0.0
        return state.ewma_s * math.exp(-max(0.0, now - state.ewma_at) / self.config.ewma_tau_s)

    def record_probe(self, provider: str, ok: bool, sent_at: float | None = None) -> None:
        """An active probe's outcome (``sent_at``: when it was sent, on this tracker's
        clock): feeds availability; a success ends a quota lockout and moves an open
        circuit to half-open, so trial calls can take it back early."""
        now = self.clock()
        with self._lock:
            state = self._provider(provider)
            moves = self._account_probe(state, provider, now, ok, sent_at)
            self._prune(state, now)
            if self._outbox is not None and len(self._outbox) < MAX_UNSHARED:
                self._outbox.append(SharedOutcome(PROBE, provider, "success" if ok else "unreached", now,
                                                  now if sent_at is None else sent_at))
        self._notify(provider, moves)

    def _account_probe(self, state: _Provider, provider: str, now: float, ok: bool,
                       sent_at: float | None) -> list[Transition]:
        """Count one probe's outcome (lock held); returns the breaker's moves."""
        state.window.add_probe(now, ok)
        state.last_probe = now
        sent = now if sent_at is None else sent_at
        if not ok:
            state.probe_run.failed(sent)
            return []
        state.probe_run.passed(sent, now)
        state.quota_until = -math.inf
        breaker = state.breaker
        trials = list(breaker.trials)
        passing_since = state.probe_run.first_since(breaker.opened_at)
        overtaken = False
        if breaker.probes_convince(sent, passing_since):
            for issued in [issued for issued in state.remote_trials if issued < sent]:
                del state.remote_trials[issued]  # overtaken by the probe, as this process's own
                overtaken = True
        moves = breaker.probe_succeeded(now, sent, passing_since)
        if overtaken or any(permit.void for permit in trials):
            # Every host hears the probe at about the same moment and finds the door free:
            # the next trial takes turns from then, or each host would send one at once.
            state.trial_freed_at = now
        gate = self.trial_gate
        if gate is not None:
            for permit in trials:
                if permit.void:  # overtaken by the probe: its place at the gate comes back
                    gate.release(permit.provider, permit.issued)
            if moves and state.gate_hold is not None:
                # The probe (this process's or another's) ended the cooldown the place was
                # held for: the trials it lets go must find it free.
                gate.release(provider, state.gate_hold)
                state.gate_hold = None
        return moves

    def _prune(self, state: _Provider, now: float) -> None:
        horizon = now - self.config.window_s
        state.window.prune(horizon)
        for times in (state.credential, state.not_found):
            while times and times[0] < horizon:
                times.popleft()

    def _notify(self, provider: str, moves: list[Transition], remote: bool = False) -> None:
        """Hand ``moves`` to the listeners; called after the lock is released. ``remote``:
        the moves other processes' outcomes caused (``apply``)."""
        if not moves:
            return
        hooks = [hook for hook, wants_remote in self._listeners if wants_remote or not remote]
        for move in moves:
            for hook in hooks:
                try:
                    hook(provider, move.from_state.value, move.to_state.value, move.reason)
                except Exception:  # noqa: BLE001 - a metrics hook must not break routing
                    pass

    # --- reading it ---------------------------------------------------------------------

    def allow(self, provider: str) -> Permit:
        """May a call go to ``provider`` now: a permit, truthy while the circuit is closed
        or for a half-open trial call, falsy otherwise. Hand it back to ``record(permit=)``."""
        now = self.clock()
        with self._lock:
            state = self._providers.get(provider)
            if state is None:  # never seen: closed, and no state until a call is recorded
                return Permit(provider, True, 0, now)
            permit, moves = self._grant(state, provider, now)
        if moves:
            self._notify(provider, moves)
        return permit

    def _grant(self, state: _Provider, provider: str, now: float) -> tuple[Permit, list[Transition]]:
        """The breaker's permit for one call and its moves (lock held; moves are notified
        after the lock is released). A closed circuit's permit is granted here, as
        ``Breaker.allow`` would (a closed circuit has no move to make): the breaker's calls
        cost as much as the rest of ``begin`` (tests/scoring/test_fast_path.py holds the
        two paths to the same permits). A trial permit also needs a place at the trial gate,
        when the trials are counted across processes."""
        breaker = state.breaker
        if breaker.state is _CLOSED:  # the common case
            if now - state.last_granted >= self.config.open_cooldown_s and self._outbox is not None:
                self._announce(provider, now, False)  # after a pause: maybe the retrial of one ranked out
            state.last_granted = now
            return Permit(provider, True, breaker.period, now), []
        if self._held_off(state, provider, now):
            return Permit(provider, False, breaker.period, now), []
        permit, moves = breaker.allow(provider, now)
        gate = self.trial_gate
        if permit.trial and gate is not None and not gate.acquire(
            provider, permit.issued, permit.deadline, self.config.trials_at_once
        ):
            breaker.trials.remove(permit)  # another process holds the trials: none here
            permit = Permit(provider, False, breaker.period, now)
        if permit:
            state.last_granted = now
            if permit.trial:
                self._announce(provider, now, True)
        return permit, moves

    def status(self, provider: str) -> ProviderHealth:
        now = self.clock()
        with self._lock:
            state = self._known(provider)
            self._prune(state, now)
            return self._health(provider, state, now)

    def exported(self, limit: int) -> tuple[list[ProviderHealth], int]:
        """The health of the first ``limit`` providers recorded (by name), and how many
        more there are: the provider gauges export only these, like a label cap."""
        now = self.clock()
        with self._lock:
            names = list(self._providers)
            for name in names[:limit]:
                self._prune(self._providers[name], now)
            kept = [self._health(name, self._providers[name], now) for name in sorted(names[:limit])]
        return kept, max(0, len(names) - limit)

    def snapshot(self) -> list[ProviderHealth]:
        now = self.clock()
        with self._lock:
            for state in self._providers.values():
                self._prune(state, now)
            return [self._health(name, self._providers[name], now) for name in sorted(self._providers)]

    def _health(self, name: str, state: _Provider, now: float) -> ProviderHealth:
        config = self.config
        window = state.window
        breaker = state.breaker
        circuit = breaker.effective_state(now)
        total, probes = len(window.calls), len(window.probes)
        failed, slow = window.failed, window.slow
        reached = window.reached + window.probes_ok
        threshold = config.apdex_threshold(name)
        satisfied, tolerating = window.satisfied, window.tolerating
        availability = reached / (total + probes) if total + probes else 1.0
        if circuit is Circuit.OPEN:
            availability = 0.0
        error_rate = failed / total if total else 0.0
        latency_score = (satisfied + tolerating / 2) / total if total else 1.0
        score = health_score(availability, error_rate, latency_score, config.weights)
        slow_rate = slow / total if total else 0.0
        quota = state.quota_until > now
        throttled = state.throttled_until > now
        reasons: list[str] = []
        if circuit is Circuit.OPEN:
            reasons.append(f"circuit open since {self._at(now, breaker.since)} after {breaker.open_reason}; "
                           f"next trial call at {self._at(now, breaker.next_trial_at)} "
                           f"(cooldown {breaker.cooldown_s:g} s)")
            if breaker.probes_misled:
                reasons.append(f"probes pass but a trial call they let through failed: until the circuit "
                               f"closes, probes end a cooldown once they have passed for "
                               f"{config.misled_probe_run_s:g} s")
        elif circuit is Circuit.HALF_OPEN:
            out = breaker.trials_out(now) + self._prune_remote_trials(state, now)
            reasons.append(f"circuit half-open: {out} trial call{'' if out == 1 else 's'} in flight, "
                           f"{breaker.trials_passed} of {config.half_open_trials} passed")
        elif breaker.on_probation(now):
            reasons.append(f"circuit closed at {self._at(now, breaker.closed_at)}, on probation until "
                           f"{self._at(now, breaker.closed_at + config.probation_s)}: a failure sends it "
                           "back to half-open")
        if quota:
            reasons.append(f"{state.quota_reason}: out until {self._at(now, state.quota_until)} "
                           "or a successful probe")
        if throttled:
            reasons.append(f"throttled until {self._at(now, state.throttled_until)} by {state.throttle_reason}")
        if total:
            if failed:
                reasons.append(f"{failed} of {total} calls failed in the last {config.window_s:g} s")
            if latency_score < 1.0:
                reasons.append(f"Apdex {latency_score:.2f} (T = {threshold:g} s)")
            if total >= config.min_calls and slow_rate >= config.slow_call_rate:
                reasons.append(f"slow: {slow_rate:.0%} of calls over {config.slow_call_s:g} s")
        if state.credential:
            errors = "error" if len(state.credential) == 1 else "errors"
            reasons.append(f"{len(state.credential)} credential {errors} (401/403): check the API key; "
                           "not counted against health")
        if state.not_found:
            reasons.append(f"{len(state.not_found)} calls for a missing model (404); not counted against health")
        if total + probes == 0 and circuit is Circuit.CLOSED and not quota:
            health_state = State.UNKNOWN
            score = 1.0
            reasons.append("no calls in the window yet")
        elif circuit is Circuit.OPEN or quota or score < config.degraded_score:
            health_state = State.UNAVAILABLE
        elif score < config.healthy_score or circuit is Circuit.HALF_OPEN or (
            total >= config.min_calls and slow_rate >= config.slow_call_rate
        ):
            health_state = State.DEGRADED
        else:
            health_state = State.HEALTHY
        until = max(state.throttled_until, state.quota_until)
        return ProviderHealth(
            provider=name,
            score=round(score, 6),
            availability=round(availability, 6),
            error_rate=round(error_rate, 6),
            latency_score=round(latency_score, 6),
            state=health_state,
            circuit=circuit,
            calls=total,
            rate_limited_until=self._wall(now, until) if until > now else None,
            reasons=reasons,
            in_flight=state.in_flight,
            slow_call_rate=round(slow_rate, 6),
            credential_errors=len(state.credential),
            not_found_errors=len(state.not_found),
            probes=probes,
        )

    def _wall(self, now: float, at: float) -> datetime:
        return datetime.fromtimestamp(self.wall_clock() + (at - now), UTC)

    def _at(self, now: float, at: float) -> str:
        return self._wall(now, at).strftime("%H:%M:%S")

    def _probed(self, state: _Provider, now: float) -> bool:
        """Whether active probes test the provider (one ended within ``max_cooldown_s``)."""
        return now - state.last_probe < self.config.max_cooldown_s

    def _retrial_due(self, state: _Provider, provider: str, now: float) -> bool:
        """Whether a provider ranked out by its score is due one call to test it again.

        Probed: once two probes in a row sent since its last call have passed (Envoy's and
        HAProxy's healthy threshold of 2), at most once per ``open_cooldown_s``. Not probed
        (no probe within ``max_cooldown_s``): once per ``max_cooldown_s``."""
        config = self.config
        if now - state.last_granted < config.open_cooldown_s:
            return False
        if self._probed(state, now):
            due = max(state.last_granted + config.open_cooldown_s, state.probe_run.two_heard_since(state.last_granted))
        else:
            due = state.last_granted + config.max_cooldown_s
        if self.turn is not None:
            # Hosts take turns from the moment it came due (every host hears the second
            # probe at about the same time): the first one's call reaches the others.
            due += self.turn(provider, -1)
        return now >= due

    def claim_probe(self, provider: str, for_s: float) -> bool:
        """Whether this process sends ``provider``'s probe now. Processes that share a trial
        gate (one host's workers) send one probe per provider per interval between them,
        whichever claims it first, for ``for_s``: every worker runs its prober, and the
        host probes as one process would (a probe success opens the door to trials, so
        four probers would let trials through four times as often). A process alone, or a
        gate that cannot decide at once, sends it."""
        gate = self.trial_gate
        if gate is None:
            return True
        now = self.clock()
        key = f"{provider}\0probe"
        held = self._probe_claims.pop(provider, None)
        if held is not None:  # this process's own claim: the prober that holds it goes on
            gate.release(key, held)
        if not gate.acquire(key, now, now + for_s, 1):
            return False
        self._probe_claims[provider] = now
        return True

    def needs_watching(self, provider: str) -> bool:
        """Whether probes should come at the short interval: the circuit is not closed, or
        the provider is ranked out by its score (degraded or unavailable)."""
        now = self.clock()
        with self._lock:
            state = self._providers.get(provider)
            if state is None:
                return False
            self._prune(state, now)
            health = self._health(provider, state, now)
        return health.circuit is not Circuit.CLOSED or health.state in (State.DEGRADED, State.UNAVAILABLE)

    def choose(self, candidates: Iterable[str], *, claim: bool = True) -> Choice:
        """The provider to call and the failover order after it.

        Ranks by score (scores within ``tie_band`` are equals), skipping open circuits
        and throttled or quota-exhausted providers; a half-open provider with a trial
        permit free goes first, so recovery is noticed; so does a provider ranked below
        the best when a call to test it again is due (``_retrial_due``: without calls a
        score can never recover). Equals are ordered by load: the
        peak-EWMA of time to first token times the calls in flight plus one (Finagle's
        and Linkerd's balancer cost). When every candidate is excluded it still returns
        the one that comes back soonest, with ``panic=True``.

        When processes share a trial gate, a retrial is claimed on it as it is chosen, so
        one process of the host sends it; ``claim=False`` only reads (a status page).
        """
        names = list(dict.fromkeys(candidates))
        if not names:
            raise ValueError("choose() needs at least one candidate")
        now = self.clock()
        band = self.config.tie_band
        eligible: list[tuple[float, float, float, int, str]] = []  # trial, score, cost, index, name
        excluded: list[tuple[tuple[float, ...], str]] = []
        with self._lock:
            for index, name in enumerate(names):
                state = self._known(name)
                self._prune(state, now)
                health = self._health(name, state, now)
                breaker = state.breaker
                open_until = breaker.next_trial_at if health.circuit is Circuit.OPEN else -math.inf
                blocked_until = max(state.throttled_until, state.quota_until, open_until)
                if blocked_until > now or not breaker.would_allow(now) or self._held_off(state, name, now):
                    excluded.append(((blocked_until, -health.score, index), name))
                    continue
                idle = self._retrial_due(state, name, now)
                if health.circuit is Circuit.HALF_OPEN:
                    # A trial goes first, so the circuit closes as soon as its trials pass;
                    # but once one has passed, a probed provider still ranked out by its
                    # score waits for its retrial (0.8, see rank): its probes, not the
                    # users' calls, show it back, and a partial failure (a rising error rate)
                    # passes one trial in two, so trials in a row would spend calls on it.
                    paced = breaker.trials_passed > 0 and not idle and self._probed(state, now)
                    trial_first = 0.8 if paced else 0.0
                else:
                    trial_first = 1.0 if not idle else 0.9
                cost = self._ewma_now(state, now) * (state.in_flight + 1)
                eligible.append((trial_first, health.score, cost, index, name))
        best = max((score for _, score, _, _, _ in eligible), default=0.0)

        def tier_of(score: float) -> float:
            # Scores within tie_band of each other (counted from the best) are equals.
            return math.floor((best - score) / band + 1e-9) if band else -score

        gate = self.trial_gate
        if claim and gate is not None:
            for position, (trial_first, score, cost, index, name) in enumerate(eligible):
                if trial_first == 0.9 and tier_of(score) > 0 and not gate.acquire(
                        f"{name}\0retrial", now, now + RETRIAL_CLAIM_S, 1):
                    eligible[position] = (1.0, score, cost, index, name)  # another worker sends it

        def rank(entry: tuple[float, float, float, int, str]) -> tuple[float, ...]:
            trial_first, score, cost, index, _ = entry
            tier = tier_of(score)
            if trial_first == 0.9 and tier <= 0:
                trial_first = 1.0  # among the best it gets calls anyway: no retrial needed
            elif trial_first == 0.8:
                trial_first = 0.0 if tier <= 0 else 1.0  # among the best, its trial goes first
            return (trial_first, tier, cost, index)

        eligible.sort(key=rank)
        excluded.sort()
        order = [entry[-1] for entry in eligible] + [name for _, name in excluded]
        return Choice(provider=order[0], order=order, panic=not eligible)

