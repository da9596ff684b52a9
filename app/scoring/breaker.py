"""A circuit breaker per provider: closed, open, half-open, with a permit per call.

closed -> open after ``consecutive_failures`` failures in a row, or when at least
``min_calls`` calls since the circuit last closed fail at ``failure_rate`` or more;
open -> half-open when its cooldown is over (or at once when an active probe succeeds);
half-open lets ``trials_at_once`` trial calls through at a time, and closes when
``half_open_trials`` of them have passed; a failed trial reopens it with the cooldown
doubled, capped at ``max_cooldown_s``, so a dead provider costs one call per backoff and a
recovered one is found within seconds.

Every call carries its own :class:`Permit` from ``allow``, and its outcome is matched to
that permit, never to a count: a call admitted before a trip is no trial and cannot reopen
a circuit closed since; a permit handed back twice counts once; a trial permit never handed
back is presumed lost after ``trial_timeout_s``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from app.scoring.config import HealthConfig


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Module-level names for the states the hot path tests on every call: a global is read
# in one step, an enum member through its class in two.
_CLOSED, _OPEN, _HALF_OPEN = Circuit.CLOSED, Circuit.OPEN, Circuit.HALF_OPEN


class Permit:
    """A call's ticket from ``HealthTracker.allow``: truthy when the call may go.

    Hand it back with ``record(provider, ..., permit=permit)`` so the outcome is counted
    for the period it was admitted in, and only once.
    """

    __slots__ = ("provider", "granted", "period", "issued", "trial", "deadline", "returned", "void")

    def __init__(self, provider: str, granted: bool, period: int, issued: float, trial: bool = False,
                 deadline: float = 0.0) -> None:
        self.provider = provider
        self.granted = granted
        self.period = period  # the breaker's state period it was handed out in
        self.issued = issued  # when the call was admitted (the tracker's clock)
        self.trial = trial  # a half-open trial call
        self.deadline = deadline  # trial permits only: presumed lost after this
        self.returned = False  # handed back to record(): a second return is a duplicate
        self.void = False  # its period ended, or it was presumed lost: no verdict for the breaker

    def __bool__(self) -> bool:
        return self.granted

    def __repr__(self) -> str:
        kind = "trial" if self.trial else "call" if self.granted else "denied"
        return f"Permit({self.provider!r}, {kind}, period={self.period})"


@dataclass(slots=True)
class Transition:
    from_state: Circuit
    to_state: Circuit
    reason: str


@dataclass(slots=True)
class Breaker:
    config: HealthConfig
    state: Circuit = _CLOSED
    since: float = 0.0  # when the current state began
    half_open_since: float = 0.0  # when the last half-open period began
    #: Counts every change of state: a permit is good only for the period it came from.
    period: int = 0
    cooldown_s: float = 0.0  # of the current (or last) open period
    next_trial_at: float = 0.0  # open: when the cooldown is over and a trial call may go
    trips: int = 0  # opens since the circuit last stayed closed through its probation
    closed_at: float = -math.inf  # when the circuit last closed after half-open
    opened_at: float = -math.inf  # when the circuit last opened
    consecutive: int = 0  # failures in a row
    last_failure_issued: float = -math.inf  # when the run's latest failed call was admitted
    #: Trial permits handed out in this half-open period and not yet back (a few at most).
    trials: deque[Permit] = field(default_factory=deque)
    trials_passed: int = 0
    open_reason: str = ""
    #: The current half-open period began with a probe, not at the end of a cooldown.
    half_open_by_probe: bool = False
    #: A trial let through by a probe failed since the circuit last closed: the provider
    #: answers probes but fails calls (a partial failure), so until it closes again a
    #: cooldown ends early only after a run of passed probes (``misled_probe_run_s``).
    probes_misled: bool = False
    #: (time, failed) of the calls since the circuit last closed, within the window
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    recent_failures: int = 0  # kept with ``recent``, so a call costs O(1)

    # --- permits --------------------------------------------------------------------------

    def allow(self, provider: str, now: float) -> tuple[Permit, list[Transition]]:
        """A permit for one call now: granted while closed, a trial permit in half-open
        while fewer than ``trials_at_once`` are out, denied otherwise."""
        moves = self._maybe_half_open(now)
        if self.state is _CLOSED:
            return Permit(provider, True, self.period, now), moves
        if self.state is _HALF_OPEN:
            self._expire_trials(now)
            if len(self.trials) < self.config.trials_at_once:
                permit = Permit(provider, True, self.period, now, True, now + self.config.trial_timeout_s)
                self.trials.append(permit)
                return permit, moves
        return Permit(provider, False, self.period, now), moves

    def effective_state(self, now: float) -> Circuit:
        """The state as ``allow`` will find it now: an open circuit whose cooldown is over
        reads as half-open (the next call to ``allow``, ``record`` or ``release`` moves it
        there), with no trial out."""
        if self.state is _OPEN and now >= self.next_trial_at:
            return _HALF_OPEN
        return self.state

    def would_allow(self, now: float) -> bool:
        """``allow`` without taking a permit or changing state (for ranking)."""
        state = self.effective_state(now)
        if state is _HALF_OPEN:
            return self.trials_out(now) < self.config.trials_at_once
        return state is _CLOSED

    def trials_out(self, now: float) -> int:
        """Trial permits out and not yet presumed lost (half-open only)."""
        if self.state is not _HALF_OPEN:
            return 0
        return sum(1 for permit in self.trials if permit.deadline > now)

    def _expire_trials(self, now: float) -> None:
        while self.trials and self.trials[0].deadline <= now:
            self.trials.popleft().void = True  # lost: a late answer is no trial

    def _take_trial(self, permit: Permit | None) -> bool:
        """Take a trial permit back; True when it was out in this half-open period.

        Without a permit (a caller that never asked) the oldest trial out is taken for it;
        with no trial out it still counts, as for a caller that never asks allow()."""
        if permit is None:
            if self.trials:
                self.trials.popleft().void = True
            return True
        try:
            self.trials.remove(permit)  # a few at most: O(trials_at_once)
        except ValueError:
            return False
        return True

    # --- outcomes -------------------------------------------------------------------------

    def _counts(self, permit: Permit | None) -> bool:
        """Whether an outcome is news for the breaker now (and spends its permit)."""
        if permit is None:
            return self.state is not _OPEN
        if permit.returned:
            return False  # counted already
        permit.returned = True
        if permit.void or not permit.granted:
            return False  # presumed lost, its period over, or a call that went without one
        if permit.trial:
            return self.state is _HALF_OPEN and self._take_trial(permit)
        return self.state is _CLOSED and permit.period == self.period

    def release(self, now: float, permit: Permit | None) -> list[Transition]:
        """A call that is no verdict (429, 401/403, 404, cancelled) ended: its trial permit,
        if it had one, comes back for another call."""
        moves = self._maybe_half_open(now)
        if self._counts(permit) and permit is None and self.state is _HALF_OPEN:
            self._take_trial(None)
        return moves

    def record(self, now: float, failed: bool, what: str, permit: Permit | None = None) -> list[Transition]:
        """Account one scored call; returns the moves it caused, in order."""
        moves = self._maybe_half_open(now)
        if not self._counts(permit):
            return moves  # admitted in an earlier period, or already counted
        if self.state is _HALF_OPEN:
            if permit is None:
                self._take_trial(None)
            if failed:
                # The next trial is due a cooldown after this one was sent, not after its
                # failure showed: a trial that timed out has cost its wait already.
                sent = permit.issued if permit is not None else now
                return [*moves, self._trip(now, f"a trial call failed ({what})", sent)]
            self.trials_passed += 1
            if self.trials_passed >= self.config.half_open_trials:
                moves.append(self._close(now))
            return moves
        if failed and self.on_probation(now):
            # Just back and failing again: one trial call at a time decides, at once,
            # whether this is noise or a relapse (a failed trial reopens it).
            self._enter(_HALF_OPEN, now)
            return [*moves, Transition(_CLOSED, _HALF_OPEN, f"a failure on probation ({what})")]
        issued = permit.issued if permit is not None else now
        if failed:
            self.consecutive += 1
            self.last_failure_issued = max(self.last_failure_issued, issued)
        elif issued >= self.last_failure_issued:
            # Only a call sent after the run's latest failed one ends the run: a long call
            # admitted earlier that succeeds now says nothing of the provider since.
            self.consecutive = 0
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

    def on_probation(self, now: float) -> bool:
        """Closed again less than ``probation_s`` ago: a failure sends it back to half-open."""
        return self.state is _CLOSED and now - self.closed_at < self.config.probation_s

    def probe_succeeded(self, now: float, sent: float | None = None,
                        passing_since: float | None = None) -> list[Transition]:
        """An active probe sent at ``sent`` reached the provider: an open circuit goes
        half-open at once and lets its trial calls decide (Envoy's
        successful_active_health_check_uneject_host). In half-open, trial calls sent before
        the probe are overtaken by it: they no longer hold the door, and a late failure of
        theirs (a timeout sent while the provider was still down) cannot reopen it.

        Once a trial a probe let through has failed (``probes_misled``), one passed probe
        does neither: see :meth:`probes_convince`."""
        sent = now if sent is None else sent
        if not self.probes_convince(sent, passing_since):
            return []
        # Past its cooldown the next call moves it anyway; a probe sent before the circuit
        # opened says nothing of the provider since.
        if self.effective_state(now) is _OPEN and sent >= self.since:
            self._enter(_HALF_OPEN, now)
            self.half_open_by_probe = True
            return [Transition(_OPEN, _HALF_OPEN, "a probe succeeded")]
        if self.state is _HALF_OPEN:
            while self.trials and self.trials[0].issued < sent:  # handed out in time order
                self.trials.popleft().void = True
        return []

    def probes_convince(self, sent: float, passing_since: float | None) -> bool:
        """Whether a passed probe sent at ``sent`` speaks for the provider. Always, unless
        a trial a probe let through has failed (``probes_misled``): then only once the
        probes have passed without a failure since ``passing_since`` (the send of the first
        of their run sent since the circuit opened) for ``misled_probe_run_s``. Until then
        a trial out keeps its place as well: its verdict decides, not the probe."""
        if not self.probes_misled:
            return True
        return (passing_since is not None and passing_since >= self.opened_at
                and sent - passing_since >= self.config.misled_probe_run_s)

    # --- moves ----------------------------------------------------------------------------

    def _enter(self, state: Circuit, now: float) -> None:
        if state is _HALF_OPEN:
            self.half_open_since = now
        self.state, self.since = state, now
        self.half_open_by_probe = False
        self.period += 1
        for permit in self.trials:  # trials still out belong to the period that ends
            permit.void = True
        self.trials.clear()
        self.trials_passed = 0
        self.consecutive = 0
        self.last_failure_issued = -math.inf
        self.recent.clear()
        self.recent_failures = 0

    def _maybe_half_open(self, now: float) -> list[Transition]:
        """Make the move ``effective_state`` reads (open, and its cooldown over), and forget
        the trials presumed lost: their late answers are no trials."""
        self._expire_trials(now)
        if self.effective_state(now) is not self.state:
            self._enter(_HALF_OPEN, now)
            return [Transition(_OPEN, _HALF_OPEN, f"cooldown of {self.cooldown_s:g} s over")]
        return []

    def _close(self, now: float) -> Transition:
        self._enter(_CLOSED, now)
        self.closed_at = now  # on probation: the backoff is kept until it has passed
        self.probes_misled = False
        return Transition(_HALF_OPEN, _CLOSED, f"{self.config.half_open_trials} trial calls passed")

    def _trip(self, now: float, reason: str, sent: float | None = None) -> Transition:
        before = self.state
        if before is _CLOSED and not self.on_probation(now):
            self.trips = 0  # it stayed up through its probation: a new incident
        # Doubling from the last cooldown, capped at every step: no power, nothing to
        # overflow however long the provider stays down. A relapse on probation picks up
        # where the last incident left off, so a flapping provider stays out longer.
        if self.trips == 0:
            self.cooldown_s = self.config.open_cooldown_s
        else:
            self.cooldown_s = min(self.cooldown_s * 2.0, self.config.max_cooldown_s)
        self.trips += 1
        if before is _HALF_OPEN and self.half_open_by_probe:
            self.probes_misled = True
        self._enter(_OPEN, now)
        self.opened_at = now
        self.next_trial_at = max(now, (now if sent is None else sent) + self.cooldown_s)
        self.open_reason = reason
        return Transition(before, _OPEN, reason)
