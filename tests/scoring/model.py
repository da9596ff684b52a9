"""A reference model of one provider's circuit breaker, throttle, quota and load.

Written from SPEC.md section 5 and docs/HEALTH.md ("The circuit breaker", "Permits",
"Rate limits and quota", "Active probes", "Defaults and why"), sharing no code with
``app/scoring``: it imports nothing from ``app``, has its own outcome taxonomy and keeps
its own permits. ``tests/scoring/test_model.py`` drives it beside a real ``HealthTracker``
and compares what the two say after every step.

Each rule below quotes the sentence of the docs it comes from ("HEALTH" is
docs/HEALTH.md, "SPEC" is SPEC.md section 5). Where the docs leave a point open (a
boundary, or when a lazy move is made), the comment says so and says which reading the
code settled; the rule itself is written here in the model's own terms.

Times are plain floats on the tracker's monotonic clock. The tests keep them multiples of
1/4 s, so every sum and difference below is exact and a boundary is a boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: HEALTH says a trial permit not handed back within trial_timeout_s "is presumed lost and
#: its slot freed; its late answer is no trial either". True would model a tracker that
#: forgets lost trials only when allow() next looks for a free slot (so a late answer still
#: counts): the state machine finds that mistake within seconds when the code makes it.
LOST_TRIALS_DROPPED_ONLY_BY_ALLOW = False

# --- the outcome taxonomy (HEALTH "What is not the provider's health" table) -----------------

SUCCESS = "success"  # 2xx
CLIENT_ERROR = "client_error"  # the caller's own 4xx: "scored as a success for the provider"
FAILURE = "failure"  # 500, 501, other 5xx, an unexpected exception: "scored, reached"
UNREACHED = "unreached"  # timeout, connection error, 408/502/503/504: "scored, not reached"
THROTTLED = "throttled"  # 429, 529: "a cooldown, not scored"
QUOTA = "quota"  # 429 with insufficient_quota, billing_*, credit_balance_too_low: "a long lockout"
CREDENTIAL = "credential"  # 401, 403: "counted apart"
NOT_FOUND = "not_found"  # 404: "counted apart"
CANCELLED = "cancelled"  # CancelledError: "no verdict, not scored; its trial permit comes back"

SCORED = frozenset({SUCCESS, CLIENT_ERROR, FAILURE, UNREACHED})
#: SPEC: "Failed = 5xx, timeout, connection error."
FAILED = frozenset({FAILURE, UNREACHED})

_QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_too_low"})


def outcome_of(status_code: int | None = None, error: BaseException | None = None,
               error_code: str | None = None) -> str:
    """The class of one call's answer, from the HEALTH table (not from app.scoring)."""
    if status_code is not None:
        if status_code in (429, 529):  # 529: Anthropic's "overloaded"
            # "429 with error_code insufficient_quota, billing_*, credit_balance_too_low"
            quota = error_code is not None and (error_code in _QUOTA_CODES or error_code.startswith("billing_"))
            return QUOTA if quota else THROTTLED
        if status_code in (401, 403):
            return CREDENTIAL
        if status_code == 404:
            return NOT_FOUND
        if status_code in (408, 502, 503, 504):
            return UNREACHED
        if status_code >= 500:
            return FAILURE
        if status_code >= 400:
            return CLIENT_ERROR
        return SUCCESS
    if error is None:
        return SUCCESS  # SPEC: "no status and no error = success"
    if type(error).__name__ == "CancelledError":
        return CANCELLED
    if isinstance(error, (TimeoutError, ConnectionError)):
        return UNREACHED
    return FAILURE  # "an unexpected exception"


# --- permits ---------------------------------------------------------------------------------


@dataclass(eq=False)
class ModelPermit:
    """The model's twin of one permit handed out by ``allow``."""

    granted: bool
    trial: bool
    period: int  # the breaker's period it was handed out in
    issued: float  # its admission time ("each permit carries its admission time")
    deadline: float = math.inf  # trial permits: presumed lost from then on
    returned: bool = False


def _usable_hint(value: float | None) -> float | None:
    """HEALTH: "A hint that is NaN, negative, over a day or unreadable is skipped"."""
    if value is None or math.isnan(value) or value < 0 or value > 86_400:
        return None
    return value


@dataclass
class Cfg:
    """The settings the model reads (the same numbers the tracker's HealthConfig gets)."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 60.0
    open_cooldown_s: float = 5.0
    max_cooldown_s: float = 10.0
    half_open_trials: int = 3
    trials_at_once: int = 1
    trial_timeout_s: float = 300.0
    probation_s: float = 60.0
    throttle_min_s: float = 1.0
    throttle_max_s: float = 300.0
    quota_cooldown_s: float = 600.0
    misled_probe_run_s: float = 2.0


@dataclass
class ProviderModel:
    cfg: Cfg
    state: str = CLOSED  # as last moved; an open circuit past its cooldown *reads* half-open
    #: "each change of state starts a new one": a permit is good for its own period only
    period: int = 0
    cooldown_s: float = 0.0
    next_trial_at: float = -math.inf
    closed_at: float = -math.inf  # last close after half-open (starts the probation)
    run: int = 0  # failures in a row
    run_last_sent: float = -math.inf  # admission time of the run's latest failed call
    recent: list[tuple[float, bool]] = field(default_factory=list)  # (recorded at, failed), this period
    trials: list[ModelPermit] = field(default_factory=list)  # trial permits out, this period
    trials_passed: int = 0
    throttled_until: float = -math.inf
    unhinted_429s: int = 0
    quota_until: float = -math.inf
    in_flight: int = 0
    #: (from, to) of every move, in order, to compare with the tracker's listeners.
    moves: list[tuple[str, str]] = field(default_factory=list)
    #: How the circuit last opened: "trial" (a failed trial), "run" or "rate".
    opened_by: str = ""
    opened_at: float = -math.inf
    #: HEALTH: the half-open period began with a probe; and "a trial let through by a probe
    #: failed": until the circuit closes again one passed probe no longer ends a cooldown.
    half_open_by_probe: bool = False
    probes_misled: bool = False
    probes: list[tuple[float, bool]] = field(default_factory=list)  # (sent, passed) of every probe

    # --- reading ---------------------------------------------------------------------------

    def circuit(self, now: float) -> str:
        """HEALTH: "open -> half_open when the cooldown is over: 5 s after the trip"."""
        if self.state == OPEN and now >= self.next_trial_at:
            return HALF_OPEN
        return self.state

    def live_trials(self, now: float) -> list[ModelPermit]:
        """HEALTH: "a trial permit that is not handed back within trial_timeout_s is presumed
        lost and its slot freed". Lost from the deadline on: the code settles the boundary
        (a permit due at ``now`` is lost at ``now``)."""
        if self.state != HALF_OPEN:
            return []
        return [permit for permit in self.trials if now < permit.deadline]

    def would_allow(self, now: float) -> bool:
        """HEALTH: "truthy when the call may go (closed, or a free trial slot in half-open)"."""
        circuit = self.circuit(now)
        if circuit == CLOSED:
            return True
        if circuit == HALF_OPEN:
            return len(self.live_trials(now)) < self.cfg.trials_at_once
        return False

    def on_probation(self, now: float) -> bool:
        """HEALTH: "for probation_s (60 s) after it closes, a failure sends the circuit
        straight back to half_open"; at probation_s exactly it is over."""
        return self.state == CLOSED and now - self.closed_at < self.cfg.probation_s

    def throttled(self, now: float) -> bool:
        return now < self.throttled_until

    def quota_locked(self, now: float) -> bool:
        """HEALTH: "the provider is out for 600 s (quota_cooldown_s)": back at 600 s exactly."""
        return now < self.quota_until

    def routable(self, now: float) -> bool:
        """SPEC: failover skips "open circuits and rate-limited ones"; HEALTH's choose: "open,
        or throttled or quota-locked, go last" (and a half-open one without a free slot)."""
        return self.would_allow(now) and not self.throttled(now) and not self.quota_locked(now)

    # --- moves -----------------------------------------------------------------------------

    def _enter(self, state: str) -> None:
        """A change of state: HEALTH, "a permit belongs to the breaker's *period* (each change
        of state starts a new one)", so the trials still out are trials no more. The
        failure-rate count starts afresh ("at least 10 calls since the circuit last closed");
        so does the run of failures (the docs do not say; the code settles it: a run is
        counted within one period, as the failure rate is)."""
        self.moves.append((self.state, state))
        self.state = state
        self.half_open_by_probe = False
        self.period += 1
        self.trials = []
        self.trials_passed = 0
        self.run = 0
        self.run_last_sent = -math.inf
        self.recent = []

    def _settle(self, now: float) -> None:
        """The cooldown is over: the circuit moves to half-open. The docs only say it *reads*
        half-open from then on; the move (and its notification) is made by the next call
        that asks the breaker (allow, begin, record), as the code settles it."""
        if not LOST_TRIALS_DROPPED_ONLY_BY_ALLOW:
            self._drop_lost_trials(now)
        if self.state == OPEN and now >= self.next_trial_at:
            self._enter(HALF_OPEN)

    def _trip(self, now: float, sent: float, by: str) -> None:
        """HEALTH: "A failed trial -> open again, its cooldown doubled and capped at 10 s:
        5, 10, 10, 10 s"; "only a provider that stayed up through its probation trips afresh
        at 5 s" (from closed the circuit can only trip off probation: on probation a failure
        goes to half-open instead). "The next trial is due a cooldown after the failed trial
        was *sent*, not after its failure showed" (a trip from closed: sent = now)."""
        if self.state == CLOSED:
            self.cooldown_s = self.cfg.open_cooldown_s
        else:
            self.cooldown_s = min(self.cooldown_s * 2, self.cfg.max_cooldown_s)
        if self.state == HALF_OPEN and self.half_open_by_probe:
            self.probes_misled = True
        self._enter(OPEN)
        self.opened_at = now
        self.next_trial_at = max(now, sent + self.cooldown_s)
        self.opened_by = by

    # --- driving ---------------------------------------------------------------------------

    def _drop_lost_trials(self, now: float) -> None:
        self.trials = [permit for permit in self.trials if now < permit.deadline]

    def allow(self, now: float) -> ModelPermit:
        self._settle(now)
        self._drop_lost_trials(now)  # "presumed lost and its slot freed"
        if self.state == CLOSED:
            return ModelPermit(True, False, self.period, now)
        if self.state == HALF_OPEN and len(self.trials) < self.cfg.trials_at_once:
            # HEALTH: "half_open lets one trial call at a time through (trials_at_once)".
            permit = ModelPermit(True, True, self.period, now, now + self.cfg.trial_timeout_s)
            self.trials.append(permit)
            return permit
        return ModelPermit(False, False, self.period, now)

    def begin(self, now: float) -> ModelPermit:
        self.in_flight += 1
        return self.allow(now)

    def start(self) -> None:
        self.in_flight += 1

    def _take_oldest_trial(self) -> None:
        """HEALTH: a record without a permit in half-open is "taken as a trial result ...
        (for the oldest trial out, if any)": that trial's slot is freed, its own answer later
        is no trial."""
        if self.trials:
            self.trials.pop(0)

    def _counts(self, permit: ModelPermit | None) -> bool:
        """Whether an outcome is news for the breaker (HEALTH, "Permits")."""
        if permit is None:
            # "a record without a permit ... counted in the closed state, ignored while open,
            # taken as a trial result in half-open"
            return self.state != OPEN
        if not permit.granted:
            return False  # a call that went without leave says nothing of the breaker
        if permit.trial:
            # a trial permit of this half-open period, not presumed lost nor overtaken
            if self.state == HALF_OPEN and permit in self.trials:
                self.trials.remove(permit)
                return True
            return False
        # "The outcome of a call admitted before a trip ... is no trial, and never reopens a
        # circuit that closed since": only a permit of the current closed period counts.
        return self.state == CLOSED and permit.period == self.period

    def record(self, now: float, outcome: str, permit: ModelPermit | None = None,
               retry_after_s: float | None = None, retry_after_ms: float | None = None) -> None:
        if permit is not None:
            if permit.returned:
                return  # "a permit handed back twice counts once (the second record is ignored entirely)"
            permit.returned = True
        self.in_flight = max(0, self.in_flight - 1)  # start() ... record() brackets a call
        self._settle(now)
        counts = self._counts(permit)
        if outcome not in SCORED:
            # "A trial answered 429, 401/403, 404 or cancelled gives no verdict on health and
            # hands its permit back for another trial"; one without a permit frees the oldest.
            if counts and permit is None and self.state == HALF_OPEN:
                self._take_oldest_trial()
            if outcome == THROTTLED:
                self._throttle(now, retry_after_s, retry_after_ms)
            elif outcome == QUOTA:
                # "out for 600 s (quota_cooldown_s)"; a lockout never shortens
                self.quota_until = max(self.quota_until, now + self.cfg.quota_cooldown_s)
            return
        failed = outcome in FAILED
        if not failed:
            # HEALTH: the quota lockout lasts "until an active probe or a call succeeds"
            # (the caller's own 4xx is "scored as a success for the provider": the code
            # settles that it ends the lockout too); and the unhinted 429 backoff doubles
            # "until a success resets it".
            self.quota_until = -math.inf
            self.unhinted_429s = 0
        if not counts:
            return
        if self.state == HALF_OPEN:
            if permit is None:
                self._take_oldest_trial()
            if failed:
                self._trip(now, permit.issued if permit is not None else now, "trial")
                return
            # "When 3 trials in a row have passed (half_open_trials) -> closed"
            self.trials_passed += 1
            if self.trials_passed >= self.cfg.half_open_trials:
                self._enter(CLOSED)
                self.closed_at = now
                self.probes_misled = False
            return
        # closed
        if failed and self.on_probation(now):
            self._enter(HALF_OPEN)
            return
        sent = permit.issued if permit is not None else now  # "a record without a permit
        # counts as sent when it is recorded"
        if failed:
            self.run += 1
            self.run_last_sent = max(self.run_last_sent, sent)
        elif sent >= self.run_last_sent:
            # "a success ends a run of failures only when its call was admitted after the
            # run's latest failed call" (admitted at the same instant: the code ends it too)
            self.run = 0
        self.recent.append((now, failed))
        # "within the window": a call exactly window_s old is still in it (the code settles it)
        self.recent = [(at, bad) for at, bad in self.recent if now - at <= self.cfg.window_s]
        if self.run >= self.cfg.consecutive_failures:
            # "closed -> open after 5 failures in a row, whatever the rate"
            self._trip(now, now, "run")
            return
        failures = sum(bad for _, bad in self.recent)
        if len(self.recent) >= self.cfg.min_calls and failures / len(self.recent) >= self.cfg.failure_rate:
            # "or when at least 10 calls since the circuit last closed, within the window,
            # fail at 50% or more"
            self._trip(now, now, "rate")

    def _throttle(self, now: float, retry_after_s: float | None, retry_after_ms: float | None) -> None:
        """HEALTH "Rate limits and quota": "the largest of the 1 s minimum, retry_after_s ...,
        retry-after-ms ...; clamped to 1 s .. 300 s. Without any hint it backs off from 1 s,
        doubling on each 429 in a row (1, 2, 4, 8 s, ...), until a success resets it. A
        later, shorter hint never shortens a cooldown already running." Which 429s make
        "a row" is open: the code counts only the unhinted ones."""
        hints = [h for h in (_usable_hint(retry_after_s),
                             _usable_hint(None if retry_after_ms is None else retry_after_ms / 1000)) if h is not None]
        if hints:
            wait = max(hints)
        else:
            wait = 2.0 ** self.unhinted_429s
            self.unhinted_429s += 1
        wait = min(max(wait, self.cfg.throttle_min_s), self.cfg.throttle_max_s)
        self.throttled_until = max(self.throttled_until, now + wait)

    def probe(self, now: float, ok: bool, sent_at: float | None) -> None:
        """HEALTH "Active probes": a successful probe "ends a quota lockout; moves an open
        circuit to half-open at once, if the probe was sent after it opened ...; in
        half-open, voids the trial calls sent before the probe was". A circuit whose
        cooldown is already over is left for the next call to move (it reads half-open
        anyway, with no trial out)."""
        sent = now if sent_at is None else sent_at
        self.probes.append((sent, ok))
        if not ok:
            return
        self.quota_until = -math.inf
        # "once a trial a probe let through has failed, ... only when the probes have passed
        # without a failure for misled_probe_run_s (2 s), all sent since the circuit opened":
        # the run is in the order of the probes' sends, from the latest failed one on.
        # (A failure sent at the same instant as a pass breaks it when it came after it.)
        run = [at for index, (at, passed) in enumerate(self.probes) if passed and not any(
            not ok and (failed_at > at or (failed_at == at and later > index))
            for later, (failed_at, ok) in enumerate(self.probes))]
        run_from = min((at for at in run if at >= self.opened_at), default=math.inf)
        convinced = not self.probes_misled or sent - run_from >= self.cfg.misled_probe_run_s
        if self.state == OPEN and now < self.next_trial_at and sent >= self.opened_at and convinced:
            self._enter(HALF_OPEN)
            self.half_open_by_probe = True
        elif self.state == HALF_OPEN and convinced:
            self.trials = [permit for permit in self.trials if permit.issued >= sent]

    def deadlines(self) -> list[float]:
        """The times at which something should change: for a test to step right onto them."""
        times = [self.next_trial_at, self.throttled_until, self.quota_until, self.closed_at + self.cfg.probation_s]
        times += [permit.deadline for permit in self.trials]
        times += [at + self.cfg.window_s for at, _ in self.recent]
        return [t for t in times if math.isfinite(t)]
