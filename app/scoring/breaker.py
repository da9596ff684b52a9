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
    trials_out: int = 0  # half-open permits handed out and not yet returned
    trials_passed: int = 0
    open_reason: str = ""
    #: (time, failed) of the calls since the circuit last closed, within the window
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    recent_failures: int = 0  # kept with ``recent``, so a call costs O(1)

    def allow(self, now: float) -> tuple[bool, Transition | None]:
        """May a call go now; hands out a trial permit in half-open."""
        transition = self._maybe_half_open(now)
        if self.state is Circuit.CLOSED:
            return True, transition
        if self.state is Circuit.HALF_OPEN and self.trials_out + self.trials_passed < self.config.half_open_trials:
            self.trials_out += 1
            return True, transition
        return False, transition

    def would_allow(self, now: float) -> bool:
        """``allow`` without taking a permit or changing state (for ranking)."""
        if self.state is Circuit.CLOSED:
            return True
        if self.state is Circuit.OPEN and now < self.since + self.cooldown_s:
            return False
        trials_out = self.trials_out if self.state is Circuit.HALF_OPEN else 0
        passed = self.trials_passed if self.state is Circuit.HALF_OPEN else 0
        return trials_out + passed < self.config.half_open_trials

    def _maybe_half_open(self, now: float) -> Transition | None:
        if self.state is Circuit.OPEN and now >= self.since + self.cooldown_s:
            self.state, self.since = Circuit.HALF_OPEN, now
            self.trials_out = self.trials_passed = 0
            return Transition(Circuit.HALF_OPEN, f"cooldown of {self.cooldown_s:g} s over")
        return None

    def record(self, now: float, failed: bool, what: str) -> Transition | None:
        """Account one scored call; returns the move it caused, if any."""
        transition = self._maybe_half_open(now)
        if self.state is Circuit.HALF_OPEN:
            self.trials_out = max(0, self.trials_out - 1)
            if failed:
                return self._trip(now, f"a trial call failed ({what})")
            self.trials_passed += 1
            if self.trials_passed >= self.config.half_open_trials:
                self.state, self.since, self.trips = Circuit.CLOSED, now, 0
                self.consecutive, self.trials_passed, self.trials_out = 0, 0, 0
                self.recent.clear()
                self.recent_failures = 0
                return Transition(Circuit.CLOSED, f"{self.config.half_open_trials} trial calls passed")
            return transition
        if self.state is Circuit.OPEN:
            return transition  # a call that started before the circuit opened
        self.consecutive = self.consecutive + 1 if failed else 0
        recent = self.recent
        recent.append((now, failed))
        self.recent_failures += failed
        while recent and now - recent[0][0] > self.config.window_s:
            self.recent_failures -= recent.popleft()[1]
        if self.consecutive >= self.config.consecutive_failures:
            return self._trip(now, f"{self.consecutive} consecutive failures (last: {what})")
        if len(recent) >= self.config.min_calls and self.recent_failures / len(recent) >= self.config.failure_rate:
            return self._trip(now, f"{self.recent_failures} of the last {len(recent)} calls failed")
        return transition

    def _trip(self, now: float, reason: str) -> Transition:
        self.cooldown_s = min(self.config.open_cooldown_s * 2**self.trips, self.config.max_cooldown_s)
        self.trips += 1
        self.state, self.since, self.open_reason = Circuit.OPEN, now, reason
        self.consecutive, self.trials_out, self.trials_passed = 0, 0, 0
        self.recent.clear()
        self.recent_failures = 0
        return Transition(Circuit.OPEN, reason)
