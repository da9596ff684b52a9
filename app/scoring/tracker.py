"""The health tracker the routing engine reads: scores, circuits, throttles, failover.

Fed by every upstream call (``record``, from the recording helpers) and by active probes
(``record_probe``); read by ``allow`` (may a call go now), ``status``/``snapshot`` (the
scores and why) and ``choose`` (the failover order). Time comes from an injectable
monotonic clock and an injectable wall clock (for Retry-After dates and the reasons'
times), so incidents replay without sleeping.

``record`` is on the gateway's hot path: it classifies, appends to a deque and updates
the breaker; every score is computed lazily when someone reads it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from app.scoring.breaker import Breaker, Circuit, Permit, Transition
from app.scoring.config import HealthConfig
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


#: Called on every breaker move: provider, from state, to state, reason.
TransitionHook = Callable[[str, str, str, str], None]


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
    #: Send times of the latest probes in an unbroken run of successes (the last two).
    probes_passed: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    last_probe: float = -math.inf  # when a probe last ended
    ewma_s: float | None = None
    ewma_at: float = 0.0


# Module-level names for the members record() tests on every call: a global is read in
# one step, an enum member through its class in two.
_SCORED, _ERRORS = SCORED, ERRORS
_UNREACHED, _THROTTLED, _QUOTA = Outcome.UNREACHED, Outcome.THROTTLED, Outcome.QUOTA
_CREDENTIAL, _NOT_FOUND = Outcome.CREDENTIAL, Outcome.NOT_FOUND
_CLOSED = Circuit.CLOSED


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
        #: Replaced, never changed in place: _notify reads it without the lock.
        self._listeners: tuple[TransitionHook, ...] = ()

    # --- its listeners ------------------------------------------------------------------

    def add_listener(self, hook: TransitionHook) -> None:
        """Have ``hook(provider, from_state, to_state, reason)`` called on every breaker
        move of this tracker, in order, once the move is made and the tracker's lock
        released (a hook may read the tracker). A hook that raises is skipped: metrics must
        not break routing. Adding a hook twice adds it once."""
        with self._lock:
            if hook not in self._listeners:
                self._listeners = (*self._listeners, hook)

    def remove_listener(self, hook: TransitionHook) -> None:
        """Stop calling ``hook``; a hook never added is ignored."""
        with self._lock:
            self._listeners = tuple(listener for listener in self._listeners if listener != hook)

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
        moves: list[Transition] = []
        zone: str | None = None
        with self._lock:
            if permit is not None and permit.returned:
                return None  # this call was recorded already: never counted twice
            state = self._provider(provider)
            state.last_granted = now
            if state.in_flight > 0:
                state.in_flight -= 1
            if outcome in _SCORED:
                failed = outcome in _ERRORS  # the caller's own 4xx is a success for the provider
                latency = ttft_s if ttft_s is not None else duration_s
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
                # Only a failure can trip the circuit and needs words for its reason.
                what = _describe(outcome, status_code, error) if failed else ""
                moves = state.breaker.record(now, failed, what, permit)
            else:
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
            if moves and moves[-1].to_state is _CLOSED:
                # Its trial calls proved it back: the score starts afresh from them, or the
                # failures of the outage would keep it ranked last, and unused, for a window.
                state.window.prune(state.breaker.half_open_since)
            self._prune(state, now)
        if moves:
            self._notify(provider, moves)
        return zone

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
        moves: list[Transition] = []
        with self._lock:
            state = self._provider(provider)
            state.window.add_probe(now, ok)
            state.last_probe = now
            if ok:
                state.probes_passed.append(now if sent_at is None else sent_at)
            else:
                state.probes_passed.clear()
            if ok:
                state.quota_until = -math.inf
                moves = state.breaker.probe_succeeded(now, sent_at)
            self._prune(state, now)
        self._notify(provider, moves)

    def _prune(self, state: _Provider, now: float) -> None:
        horizon = now - self.config.window_s
        state.window.prune(horizon)
        for times in (state.credential, state.not_found):
            while times and times[0] < horizon:
                times.popleft()

    def _notify(self, provider: str, moves: list[Transition]) -> None:
        """Hand ``moves`` to the listeners; called after the lock is released."""
        if not moves:
            return
        hooks = self._listeners
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

    @staticmethod
    def _grant(state: _Provider, provider: str, now: float) -> tuple[Permit, list[Transition]]:
        """The breaker's permit for one call and its moves (lock held; moves are notified
        after the lock is released). A closed circuit's permit is granted here, as
        ``Breaker.allow`` would (a closed circuit has no move to make): the breaker's calls
        cost as much as the rest of ``begin`` (tests/scoring/test_fast_path.py holds the
        two paths to the same permits)."""
        breaker = state.breaker
        if breaker.state is _CLOSED:  # the common case
            state.last_granted = now
            return Permit(provider, True, breaker.period, now), []
        permit, moves = breaker.allow(provider, now)
        if permit:
            state.last_granted = now
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
        elif circuit is Circuit.HALF_OPEN:
            out = breaker.trials_out(now)
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

    def _retrial_due(self, state: _Provider, now: float) -> bool:
        """Whether a provider ranked out by its score is due one call to test it again.

        Probed: once two probes in a row sent since its last call have passed (Envoy's and
        HAProxy's healthy threshold of 2), at most once per ``open_cooldown_s``. Not probed
        (no probe within ``max_cooldown_s``): once per ``max_cooldown_s``."""
        waited = now - state.last_granted
        if now - state.last_probe < self.config.max_cooldown_s:
            passed = state.probes_passed
            return (waited >= self.config.open_cooldown_s and len(passed) == passed.maxlen
                    and passed[0] >= state.last_granted)
        return waited >= self.config.max_cooldown_s

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

    def choose(self, candidates: Iterable[str]) -> Choice:
        """The provider to call and the failover order after it.

        Ranks by score (scores within ``tie_band`` are equals), skipping open circuits
        and throttled or quota-exhausted providers; a half-open provider with a trial
        permit free goes first, so recovery is noticed; so does a provider ranked below
        the best when a call to test it again is due (``_retrial_due``: without calls a
        score can never recover). Equals are ordered by load: the
        peak-EWMA of time to first token times the calls in flight plus one (Finagle's
        and Linkerd's balancer cost). When every candidate is excluded it still returns
        the one that comes back soonest, with ``panic=True``.
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
                if blocked_until > now or not breaker.would_allow(now):
                    excluded.append(((blocked_until, -health.score, index), name))
                    continue
                idle = self._retrial_due(state, now)
                trial_first = 0.0 if health.circuit is Circuit.HALF_OPEN else 1.0 if not idle else 0.9
                cost = self._ewma_now(state, now) * (state.in_flight + 1)
                eligible.append((trial_first, health.score, cost, index, name))
        best = max((score for _, score, _, _, _ in eligible), default=0.0)

        def rank(entry: tuple[float, float, float, int, str]) -> tuple[float, ...]:
            trial_first, score, cost, index, _ = entry
            # Scores within tie_band of each other (counted from the best) are equals.
            tier = math.floor((best - score) / band + 1e-9) if band else -score
            if trial_first == 0.9 and tier <= 0:
                trial_first = 1.0  # among the best it gets calls anyway: no retrial needed
            return (trial_first, tier, cost, index)

        eligible.sort(key=rank)
        excluded.sort()
        order = [entry[-1] for entry in eligible] + [name for _, name in excluded]
        return Choice(provider=order[0], order=order, panic=not eligible)

