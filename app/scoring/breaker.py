"""A circuit breaker per provider: closed, open, half-open.

closed -> open after ``consecutive_failures`` failures in a row, or when at least
``min_calls`` calls since the circuit last closed fail at ``failure_rate`` or more;
open -> half-open after a cooldown that doubles on each re-trip (30 s .. 300 s);
half-open lets ``half_open_trials`` trial calls through, no more at a time; all of them
succeed -> closed, one fails -> open again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from app.scoring.config import HealthConfig


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Transition:
    from_state: Circuit
    to_state: Circuit
    reason: str


@dataclass(slots=True)
class Breaker:
    config: HealthConfig
    state: Circuit = Circuit.CLOSED
    since: float = 0.0  # when the current state began
    cooldown_s: float = 0.0  # of the current (or last) open period
    trips: int = 0  # opens since the circuit was last closed for good
    consecutive: int = 0  # failures in a row
    #: When each half-open permit handed out and not yet returned is presumed lost (a
    #: call that ended without being recorded must not keep the circuit half-open).
    trial_deadlines: deque[float] = field(default_factory=deque)
    trials_passed: int = 0
    #: Calls let through by allow() while closed that have not ended. Those still running
    #: when the circuit goes half-open are not trials: they must not free trial permits.
    granted: int = 0
    legacy: int = 0
    open_reason: str = ""
    #: (time, failed) of the calls since the circuit last closed, within the window
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    recent_failures: int = 0  # kept with ``recent``, so a call costs O(1)

    def allow(self, now: float) -> tuple[bool, list[Transition]]:
        """May a call go now; hands out a trial permit in half-open."""
        moves = self._maybe_half_open(now)
        if self.state is Circuit.CLOSED:
            self.granted += 1
            return True, moves
        if self.state is Circuit.HALF_OPEN:
            self._expire_trials(now)
        if self.state is Circuit.HALF_OPEN and self.trials_out + self.trials_passed < self.config.half_open_trials:
            self.trial_deadlines.append(now + self.config.trial_timeout_s)
            return True, moves
        return False, moves

    def release(self, now: float) -> list[Transition]:
        """A call that does not count (429, 401/403, 404) ended: give back its trial permit."""
        moves = self._maybe_half_open(now)
        if not self._ended_outside_trials() and self.state is Circuit.HALF_OPEN:
            self._return_trial()
        return moves

    def probe_succeeded(self, now: float) -> list[Transition]:
        """An active probe reached the provider: an open circuit goes half-open at once
        and lets its trial calls decide (Envoy's successful_active_health_check_uneject_host)."""
        if self.state is Circuit.OPEN and now < self.since + self.cooldown_s:
            self.state, self.since = Circuit.HALF_OPEN, now
            self.trial_deadlines.clear()
            self.trials_passed = 0
            self.legacy = self.granted
            return [Transition(Circuit.OPEN, Circuit.HALF_OPEN, "a probe succeeded")]
        return []

    def _ended_outside_trials(self) -> bool:
        """Account a call's end; True when it was not a half-open trial call."""
        if self.state is Circuit.HALF_OPEN and self.legacy > 0:
            self.legacy -= 1
            self.granted = max(0, self.granted - 1)
            return True
        if self.state is not Circuit.HALF_OPEN:
            self.granted = max(0, self.granted - 1)
            return True
        return False

    @property
    def trials_out(self) -> int:
        """Half-open permits handed out and not yet returned."""
        return len(self.trial_deadlines)

    def _return_trial(self) -> None:
        if self.trial_deadlines:
            self.trial_deadlines.popleft()

    def _expire_trials(self, now: float) -> None:
        while self.trial_deadlines and self.trial_deadlines[0] <= now:
            self.trial_deadlines.popleft()

    def would_allow(self, now: float) -> bool:
        """``allow`` without taking a permit or changing state (for ranking)."""
        if self.state is Circuit.CLOSED:
            return True
        if self.state is Circuit.OPEN and now < self.since + self.cooldown_s:
            return False
        trials_out = sum(1 for d in self.trial_deadlines if d > now) if self.state is Circuit.HALF_OPEN else 0
        passed = self.trials_passed if self.state is Circuit.HALF_OPEN else 0
        return trials_out + passed < self.config.half_open_trials

    def _maybe_half_open(self, now: float) -> list[Transition]:
        if self.state is Circuit.OPEN and now >= self.since + self.cooldown_s:
            self.state, self.since = Circuit.HALF_OPEN, now
            self.trial_deadlines.clear()
            self.trials_passed = 0
            self.legacy = self.granted
            return [Transition(Circuit.OPEN, Circuit.HALF_OPEN, f"cooldown of {self.cooldown_s:g} s over")]
        return []

    def record(self, now: float, failed: bool, what: str) -> list[Transition]:
        """Account one scored call; returns the moves it caused, in order."""
        moves = self._maybe_half_open(now)
        outside = self._ended_outside_trials()
        if self.state is Circuit.HALF_OPEN and outside:
            return moves  # a call from before the half-open period: not a trial
        if self.state is Circuit.HALF_OPEN:
            self._return_trial()
            if failed:
                return [*moves, self._trip(now, f"a trial call failed ({what})")]
            self.trials_passed += 1
            if self.trials_passed >= self.config.half_open_trials:
                self.state, self.since, self.trips = Circuit.CLOSED, now, 0
                self.consecutive, self.trials_passed = 0, 0
                self.trial_deadlines.clear()
                self.recent.clear()
                self.recent_failures = 0
                moves.append(Transition(Circuit.HALF_OPEN, Circuit.CLOSED,
                                        f"{self.config.half_open_trials} trial calls passed"))
            return moves
        if self.state is Circuit.OPEN:
            return moves  # a call that started before the circuit opened
        self.consecutive = self.consecutive + 1 if failed else 0
        recent = self.recent
        recent.append((now, failed))
        self.recent_failures += failed
        while recent and now - recent[0][0] > self.config.window_s:
            self.recent_failures -= recent.popleft()[1]
        if self.consecutive >= self.config.consecutive_failures:
            return [*moves, self._trip(now, f"{self.consecutive} consecutive failures (last: {what})")]
        if len(recent) >= self.config.min_calls and self.recent_failures / len(recent) >= self.config.failure_rate:
            return [*moves, self._trip(now, f"{self.recent_failures} of the last {len(recent)} calls failed")]
        return moves

    def _trip(self, now: float, reason: str) -> Transition:
        before = self.state
        # Trial calls still running belong to this period, not to the next half-open one.
        self.granted += self.trials_out
        self.cooldown_s = min(self.config.open_cooldown_s * 2**self.trips, self.config.max_cooldown_s)
        self.trips += 1
        self.state, self.since, self.open_reason = Circuit.OPEN, now, reason
        self.consecutive, self.trials_passed = 0, 0
        self.trial_deadlines.clear()
        self.recent.clear()
        self.recent_failures = 0
        return Transition(before, Circuit.OPEN, reason)
