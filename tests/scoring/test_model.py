"""Model-based test: a HealthTracker against the reference model of tests/scoring/model.py.

Hypothesis drives both through the same random steps on a fake clock (time passes, permits
are asked for, calls start and end with every class of answer, twice with the same permit
too, 429s with and without hints, exhausted quotas, probes) and after every step compares
what the tracker says through its public surface (``status``, ``choose``, ``allow``, its
listeners) with what the model, written from SPEC.md section 5 and docs/HEALTH.md, says it
must: each provider's circuit, whether a call may go, the trial permits out and passed, the
cooldown and the next trial's time, the probation, the throttle and quota deadlines, the
calls in flight and every move of the circuit in order.

Stories that random steps reach only now and then (exact boundaries, a call admitted
before a trip ending after the close) are replayed through the same machine and oracle in
``test_stories``. Two tests pin the lost-trial rule that the code once broke. A last
test runs begin/record from real threads against one half-open circuit.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.scoring import HealthConfig, HealthTracker, Permit
from tests.scoring.fake_clock import WALL_START, FakeClock
from tests.scoring.model import CLOSED, HALF_OPEN, OPEN, THROTTLED, Cfg, ModelPermit, ProviderModel, outcome_of

PROVIDERS = ("a", "b")
PROVIDER = st.sampled_from(("a", "a", "a", "b"))  # mostly one, so its story gets far
HELD = 8  # permits kept per provider to hand back (see _keep)

# Every time below is a multiple of 1/4 s: sums are exact, and a boundary is hit exactly.
STEPS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 120.0, 400.0)


def _error(name: str | None) -> BaseException | None:
    return {
        None: None,
        "timeout": TimeoutError("read timed out"),
        "refused": ConnectionRefusedError("connection refused"),
        "unexpected": RuntimeError("boom"),
        "cancelled": asyncio.CancelledError(),
    }[name]


#: Every class of answer in HEALTH's table, as (status_code, error name).
ANSWERS = st.sampled_from([
    (200, None), (201, None), (None, None),  # success
    (400, None), (422, None),  # the caller's own 4xx: a success for the provider
    (500, None), (501, None), (None, "unexpected"),  # failure, reached
    (502, None), (503, None), (504, None), (408, None), (None, "timeout"), (None, "refused"),  # unreached
    (401, None), (403, None), (404, None), (None, "cancelled"),  # no verdict
])
#: For the rules that fail or pass a call outright, so circuits trip and close often.
FAILURES = st.sampled_from([(500, None), (503, None), (None, "timeout"), (502, None)])
SUCCESSES = st.sampled_from([(200, None), (None, None), (400, None)])
#: No hint (a backoff doubling from 1 s), usable hints, hints past the clamps, unusable ones.
RETRY_AFTER_S = st.none() | st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.5, 20.0, 400.0, -1.0, math.nan, 1e6])
RETRY_AFTER_MS = st.none() | st.sampled_from([250.0, 2500.0, 90_000.0, -5.0])
QUOTA_CODES = st.sampled_from(["insufficient_quota", "billing_hard_limit_reached", "credit_balance_too_low"])
#: No permit, or one of those held: mostly one of the latest (counted from the newest).
PICK = st.none() | st.integers(0, 2) | st.integers(0, 1000)


@st.composite
def configs(draw: st.DrawFn) -> Cfg:
    if draw(st.integers(0, 3)) == 0:
        return Cfg()  # the documented defaults
    open_cooldown = draw(st.sampled_from([1.0, 2.0, 5.0]))
    throttle_min = draw(st.sampled_from([0.5, 1.0]))
    return Cfg(
        consecutive_failures=draw(st.sampled_from([1, 2, 3, 5])),
        failure_rate=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])),
        min_calls=draw(st.sampled_from([1, 3, 4, 10])),
        window_s=draw(st.sampled_from([4.0, 10.0, 60.0])),
        open_cooldown_s=open_cooldown,
        max_cooldown_s=open_cooldown * draw(st.sampled_from([1, 2, 4, 8])),
        half_open_trials=draw(st.sampled_from([1, 2, 3])),
        trials_at_once=draw(st.sampled_from([1, 2, 3])),
        trial_timeout_s=draw(st.sampled_from([2.0, 6.0, 300.0])),
        probation_s=draw(st.sampled_from([0.0, 8.0, 60.0])),
        throttle_min_s=throttle_min,
        throttle_max_s=draw(st.sampled_from([4.0, 300.0])),
        quota_cooldown_s=draw(st.sampled_from([8.0, 600.0])),
    )


class TrackerAgainstModel(RuleBasedStateMachine):
    """One tracker, one model per provider, the same steps for both."""

    @initialize(cfg=configs())
    def build(self, cfg: Cfg) -> None:
        self.clock = FakeClock()
        self.tracker = HealthTracker(HealthConfig(**asdict(cfg)), clock=self.clock, wall_clock=self.clock.wall)
        self.models = {provider: ProviderModel(cfg) for provider in PROVIDERS}
        self.held: dict[str, list[tuple[Permit, ModelPermit]]] = {provider: [] for provider in PROVIDERS}
        self.moves: dict[str, list[tuple[str, str]]] = {provider: [] for provider in PROVIDERS}
        self.tracker.add_listener(self._moved)

    def _moved(self, provider: str, from_state: str, to_state: str, reason: str) -> None:
        self.moves[provider].append((from_state, to_state))

    def _keep(self, provider: str, permit: Permit, twin: ModelPermit) -> None:
        """Hold a permit to hand back later; past HELD, the oldest one returned or denied is
        forgotten first, so long calls stay out across trips and closes."""
        held = self.held[provider]
        held.append((permit, twin))
        if len(held) > HELD:
            spent = [i for i, (_, other) in enumerate(held) if other.returned or not other.granted]
            del held[spent[0] if spent else 0]

    def _pick(self, provider: str, pick: int | None) -> tuple[Permit | None, ModelPermit | None]:
        held = self.held[provider]
        if pick is None or not held:
            return None, None
        permit, twin = held[-1 - pick % len(held)]
        return permit, twin

    # --- time ----------------------------------------------------------------------------

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(index=st.integers(0, 1) | st.integers(0, 1000), offset=st.sampled_from([-0.25, 0.0, 0.0, 0.25]))
    def step_onto_a_deadline(self, index: int, offset: float) -> None:
        """Right onto (or a quarter second either side of) the next cooldown end, trial
        deadline, throttle or quota end, probation end or window edge."""
        now = self.clock.now
        ahead = sorted({t + offset for model in self.models.values() for t in model.deadlines() if t + offset > now})
        if ahead:
            self.clock.now = ahead[index % len(ahead)]

    # --- calls -----------------------------------------------------------------------------

    @rule(provider=PROVIDER)
    def allow(self, provider: str) -> None:
        permit = self.tracker.allow(provider)
        twin = self.models[provider].allow(self.clock.now)
        assert bool(permit) == twin.granted, f"allow({provider!r}) at {self.clock.now}"
        self._keep(provider, permit, twin)

    @rule(provider=PROVIDER)
    def begin(self, provider: str) -> None:
        permit = self.tracker.begin(provider)
        twin = self.models[provider].begin(self.clock.now)
        assert bool(permit) == twin.granted, f"begin({provider!r}) at {self.clock.now}"
        self._keep(provider, permit, twin)

    @rule(provider=PROVIDER)
    def start(self, provider: str) -> None:
        self.tracker.start(provider)
        self.models[provider].start()

    def _record(self, provider: str, answer: tuple[int | None, str | None], pick: int | None,
                duration: float) -> None:
        status, error_name = answer
        permit, twin = self._pick(provider, pick)
        error = _error(error_name)
        self.tracker.record(provider, duration_s=duration, status_code=status, error=error, permit=permit)
        self.models[provider].record(self.clock.now, outcome_of(status, error), twin)

    @rule(provider=PROVIDER, answer=ANSWERS, pick=PICK,
          duration=st.sampled_from([0.25, 3.0, 30.0]))
    def record(self, provider: str, answer: tuple[int | None, str | None], pick: int | None,
               duration: float) -> None:
        self._record(provider, answer, pick, duration)

    @rule(provider=PROVIDER, answer=FAILURES, pick=PICK)
    def record_a_failure(self, provider: str, answer: tuple[int | None, str | None], pick: int | None) -> None:
        self._record(provider, answer, pick, 1.0)

    @rule(provider=PROVIDER, answer=SUCCESSES, pick=PICK)
    def record_a_success(self, provider: str, answer: tuple[int | None, str | None], pick: int | None) -> None:
        self._record(provider, answer, pick, 0.5)

    @rule(provider=PROVIDER, answers=st.lists(st.one_of(SUCCESSES, SUCCESSES, FAILURES), min_size=1, max_size=3))
    def trial_rounds(self, provider: str, answers: list[tuple[int | None, str | None]]) -> None:
        """Ask for a permit and hand it straight back, a few times: half-open circuits
        close (or reopen) within a few steps, and closed ones go on probation."""
        for status, error_name in answers:
            permit = self.tracker.allow(provider)
            twin = self.models[provider].allow(self.clock.now)
            assert bool(permit) == twin.granted, f"allow({provider!r}) at {self.clock.now}"
            error = _error(error_name)
            self.tracker.record(provider, duration_s=0.5, status_code=status, error=error, permit=permit)
            self.models[provider].record(self.clock.now, outcome_of(status, error), twin)
        self._keep(provider, permit, twin)  # the last, to be handed back again: a duplicate

    @rule(provider=PROVIDER, answer=FAILURES)
    def an_outage(self, provider: str, answer: tuple[int | None, str | None]) -> None:
        """A long call is admitted, then calls fail, each with its own permit, until the
        circuit is no longer closed: the long call (and those held by earlier steps) were
        admitted before the trip."""
        self.allow(provider)
        model = self.models[provider]
        for _ in range(model.cfg.consecutive_failures):
            if model.circuit(self.clock.now) != CLOSED:
                break
            permit = self.tracker.allow(provider)
            twin = model.allow(self.clock.now)
            assert bool(permit) == twin.granted, f"allow({provider!r}) at {self.clock.now}"
            self.tracker.record(provider, duration_s=0.5, status_code=answer[0], error=_error(answer[1]),
                                permit=permit)
            model.record(self.clock.now, outcome_of(answer[0], _error(answer[1])), twin)

    @rule(provider=PROVIDER)
    def a_recovery(self, provider: str) -> None:
        """The cooldown passes and trial calls succeed, one at a time, until it closes."""
        model = self.models[provider]
        if model.state == OPEN:
            self.clock.now = max(self.clock.now, model.next_trial_at)
        for _ in range(model.cfg.half_open_trials):
            if model.circuit(self.clock.now) != HALF_OPEN:
                break
            permit = self.tracker.allow(provider)
            twin = model.allow(self.clock.now)
            assert bool(permit) == twin.granted, f"allow({provider!r}) at {self.clock.now}"
            self.tracker.record(provider, duration_s=0.5, status_code=200, permit=permit)
            model.record(self.clock.now, outcome_of(200), twin)

    @rule(provider=PROVIDER, answer=ANSWERS)
    def the_oldest_call_ends(self, provider: str, answer: tuple[int | None, str | None]) -> None:
        """The call out the longest ends (a long stream admitted before a trip, a trial that
        outlived its deadline)."""
        held = self.held[provider]
        out = [index for index, (_, twin) in enumerate(held) if twin.granted and not twin.returned]
        if out:
            self._record(provider, answer, len(held) - 1 - out[0], 30.0)

    @rule(provider=PROVIDER, wait=st.sampled_from([0.25, 1.0, 3.0, 10.0]), answer=SUCCESSES | FAILURES,
          probe_ago=st.none() | st.sampled_from([0.0, 0.25, 2.0]))
    def a_long_call(self, provider: str, wait: float, answer: tuple[int | None, str | None],
                    probe_ago: float | None) -> None:
        """A call admitted now answers ``wait`` seconds later (a trial's next one is due a
        cooldown after it was sent), maybe after a successful probe sent ``probe_ago``
        before its answer (which overtakes a trial sent before it)."""
        permit = self.tracker.allow(provider)
        twin = self.models[provider].allow(self.clock.now)
        assert bool(permit) == twin.granted, f"allow({provider!r}) at {self.clock.now}"
        self._keep(provider, permit, twin)
        self.clock.advance(wait)
        if probe_ago is not None:
            self.probe(provider, True, probe_ago)
        self._record(provider, answer, 0, 5.0)

    @rule(provider=PROVIDER, pick=PICK, status=st.sampled_from([429, 529]),
          retry_after_s=RETRY_AFTER_S, retry_after_ms=RETRY_AFTER_MS)
    def record_a_429(self, provider: str, pick: int | None, status: int, retry_after_s: float | None,
                     retry_after_ms: float | None) -> None:
        permit, twin = self._pick(provider, pick)
        headers = None if retry_after_ms is None else {"retry-after-ms": f"{retry_after_ms:g}"}
        self.tracker.record(provider, duration_s=0.25, status_code=status, retry_after_s=retry_after_s,
                            headers=headers, permit=permit)
        assert outcome_of(status) == THROTTLED
        self.models[provider].record(self.clock.now, THROTTLED, twin, retry_after_s, retry_after_ms)

    @rule(provider=PROVIDER, pick=PICK, code=QUOTA_CODES)
    def record_exhausted_quota(self, provider: str, pick: int | None, code: str) -> None:
        permit, twin = self._pick(provider, pick)
        self.tracker.record(provider, duration_s=0.25, status_code=429, error_code=code, permit=permit)
        self.models[provider].record(self.clock.now, outcome_of(429, None, code), twin)

    @rule(provider=PROVIDER, ok=st.booleans(),
          sent_ago=st.sampled_from([None, 0.0, 0.25, 1.0, 5.0, 30.0]))
    def probe(self, provider: str, ok: bool, sent_ago: float | None) -> None:
        sent_at = None if sent_ago is None else self.clock.now - sent_ago
        self.tracker.record_probe(provider, ok, sent_at=sent_at)
        self.models[provider].probe(self.clock.now, ok, sent_at)

    # --- what both must say ------------------------------------------------------------------

    @invariant()
    def tracker_agrees_with_the_model(self) -> None:
        now = self.clock.now
        for provider in PROVIDERS:
            model = self.models[provider]
            health = self.tracker.status(provider)
            where = f"provider {provider!r} at t={now - 1000.0:g} s: {health.reasons}"
            circuit = model.circuit(now)
            assert health.circuit == circuit, where
            assert health.in_flight == model.in_flight, where
            assert self.tracker.choose([provider]).panic is not model.routable(now), where
            assert self.moves[provider] == model.moves, where

            reasons = health.reasons
            if circuit == HALF_OPEN:
                out = len(model.live_trials(now))
                line = (f"circuit half-open: {out} trial call{'' if out == 1 else 's'} in flight, "
                        f"{model.trials_passed} of {model.cfg.half_open_trials} passed")
                assert line in reasons, where
                (said,) = [r for r in reasons if r.startswith("circuit half-open: ")]
                assert int(said.split()[2]) <= model.cfg.trials_at_once, where
            elif circuit == OPEN:
                (line,) = [reason for reason in reasons if reason.startswith("circuit open since")]
                assert f"(cooldown {model.cooldown_s:g} s)" in line, where
                assert f"next trial call at {_hms(model.next_trial_at)} " in line, where
                if model.opened_by == "run":
                    assert f"after {model.cfg.consecutive_failures} consecutive failures (last: " in line, where
            misled = any(reason.startswith("probes pass but a trial call") for reason in reasons)
            assert misled is (circuit == OPEN and model.probes_misled), where
            probation = any(reason.startswith("circuit closed at ") for reason in reasons)
            assert probation is (circuit == CLOSED and model.on_probation(now)), where

            assert any(r.startswith("quota exhausted (") for r in reasons) is model.quota_locked(now), where
            assert any(r.startswith("throttled until ") for r in reasons) is model.throttled(now), where
            until = max(model.throttled_until, model.quota_until)
            if until > now:
                assert health.rate_limited_until is not None, where
                assert abs(health.rate_limited_until.timestamp() - _wall(until)) < 1e-6, where
            else:
                assert health.rate_limited_until is None, where
            if circuit == OPEN or model.quota_locked(now):
                assert health.state == "unavailable", where
            elif circuit == HALF_OPEN:
                assert health.state in ("degraded", "unavailable"), where


def _wall(monotonic: float) -> float:
    return monotonic + WALL_START - FakeClock().now


def _hms(monotonic: float) -> str:
    return datetime.fromtimestamp(_wall(monotonic), UTC).strftime("%H:%M:%S")


TrackerAgainstModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTrackerAgainstModel = TrackerAgainstModel.TestCase


# --- stories the random steps reach only now and then, replayed through the same oracle -------

#: (name, settings, steps): each step is a rule of the machine and its arguments; the
#: machine's invariant is checked after every one. Exact boundaries live here.
STORIES: list[tuple[str, Cfg, list[tuple[str, dict[str, object]]]]] = [
    ("a call admitted before a trip fails after the close: no reopening", Cfg(), [
        ("allow", {"provider": "a"}), ("an_outage", {"provider": "a", "answer": (500, None)}),
        ("a_recovery", {"provider": "a"}), ("the_oldest_call_ends", {"provider": "a", "answer": (503, None)}),
    ]),
    ("an old call's success does not end a run sent after it", Cfg(consecutive_failures=2), [
        ("allow", {"provider": "a"}), ("advance", {"seconds": 0.25}),
        ("record_a_failure", {"provider": "a", "answer": (500, None), "pick": None}),
        ("the_oldest_call_ends", {"provider": "a", "answer": (200, None)}),
        ("record_a_failure", {"provider": "a", "answer": (500, None), "pick": None}),
    ]),
    ("a success sent with the run's last failure ends it", Cfg(consecutive_failures=2), [
        ("allow", {"provider": "a"}), ("record_a_failure", {"provider": "a", "answer": (500, None), "pick": None}),
        ("the_oldest_call_ends", {"provider": "a", "answer": (200, None)}),
        ("record_a_failure", {"provider": "a", "answer": (500, None), "pick": None}),
    ]),
    ("a call window_s old is still in the failure rate", Cfg(min_calls=2, window_s=10.0), [
        ("record_a_success", {"provider": "a", "answer": (200, None), "pick": None}),
        ("advance", {"seconds": 10.0}),
        ("record_a_failure", {"provider": "a", "answer": (500, None), "pick": None}),
    ]),
    ("a trial permit is lost at its deadline", Cfg(trial_timeout_s=6.0), [
        ("an_outage", {"provider": "a", "answer": (500, None)}), ("advance", {"seconds": 5.0}),
        ("allow", {"provider": "a"}), ("advance", {"seconds": 5.75}), ("allow", {"provider": "a"}),
        ("advance", {"seconds": 0.25}), ("allow", {"provider": "a"}),
    ]),
    ("a probe sent with a trial does not overtake it", Cfg(), [
        ("an_outage", {"provider": "a", "answer": (500, None)}), ("advance", {"seconds": 5.0}),
        ("allow", {"provider": "a"}), ("advance", {"seconds": 1.0}),
        ("probe", {"provider": "a", "ok": True, "sent_ago": 1.0}), ("allow", {"provider": "a"}),
        ("probe", {"provider": "a", "ok": True, "sent_ago": 0.25}), ("allow", {"provider": "a"}),
    ]),
    ("after a probe let a failing trial through, only a 2 s run of passed probes ends a cooldown", Cfg(), [
        ("an_outage", {"provider": "a", "answer": (500, None)}), ("advance", {"seconds": 1.0}),
        ("probe", {"provider": "a", "ok": True, "sent_ago": 0.0}),  # half-open at once
        ("a_long_call", {"provider": "a", "wait": 0.25, "answer": (503, None), "probe_ago": None}),
        ("advance", {"seconds": 1.0}), ("probe", {"provider": "a", "ok": True, "sent_ago": 0.0}),
        ("allow", {"provider": "a"}), ("advance", {"seconds": 1.0}),
        ("probe", {"provider": "a", "ok": False, "sent_ago": 0.0}),  # the run starts again
        ("advance", {"seconds": 1.0}), ("probe", {"provider": "a", "ok": True, "sent_ago": 0.0}),
        ("advance", {"seconds": 1.0}), ("probe", {"provider": "a", "ok": True, "sent_ago": 0.0}),
        ("allow", {"provider": "a"}), ("advance", {"seconds": 1.0}),
        ("probe", {"provider": "a", "ok": True, "sent_ago": 0.0}), ("allow", {"provider": "a"}),
    ]),
    ("a trial out when the circuit reopens is no trial of the next half-open", Cfg(trials_at_once=2), [
        ("an_outage", {"provider": "a", "answer": (500, None)}), ("advance", {"seconds": 5.0}),
        ("allow", {"provider": "a"}), ("allow", {"provider": "a"}),
        ("record_a_failure", {"provider": "a", "answer": (503, None), "pick": 0}),  # the second trial fails
        ("advance", {"seconds": 10.0}), ("allow", {"provider": "a"}), ("allow", {"provider": "a"}),
        ("record_a_success", {"provider": "a", "answer": (200, None), "pick": 3}),  # the first one, late
    ]),
    ("a record without a permit in half-open is the oldest trial's result", Cfg(), [
        ("an_outage", {"provider": "a", "answer": (500, None)}), ("advance", {"seconds": 5.0}),
        ("allow", {"provider": "a"}),
        ("record_a_success", {"provider": "a", "answer": (200, None), "pick": None}),
        ("allow", {"provider": "a"}),
    ]),
    ("unhinted 429s in a row double the throttle", Cfg(), [
        ("record_a_429", {"provider": "a", "pick": None, "status": 429, "retry_after_s": None,
                          "retry_after_ms": None}),
        ("record_a_429", {"provider": "a", "pick": None, "status": 429, "retry_after_s": None,
                          "retry_after_ms": None}),
        ("advance", {"seconds": 2.0}),
        ("record_a_429", {"provider": "a", "pick": None, "status": 529, "retry_after_s": None,
                          "retry_after_ms": None}),
        ("record_a_success", {"provider": "a", "answer": (200, None), "pick": None}),
        ("record_a_429", {"provider": "a", "pick": None, "status": 429, "retry_after_s": None,
                          "retry_after_ms": None}),
    ]),
    ("a quota lockout ends at quota_cooldown_s exactly", Cfg(), [
        ("record_exhausted_quota", {"provider": "a", "pick": None, "code": "insufficient_quota"}),
        ("advance", {"seconds": 400.0}), ("step_onto_a_deadline", {"index": 0, "offset": -0.25}),
        ("step_onto_a_deadline", {"index": 0, "offset": 0.0}),
    ]),
]


@pytest.mark.parametrize(("cfg", "steps"), [story[1:] for story in STORIES], ids=[story[0] for story in STORIES])
def test_stories(cfg: Cfg, steps: list[tuple[str, dict[str, object]]]) -> None:
    machine = TrackerAgainstModel()
    machine.build(cfg)
    machine.tracker_agrees_with_the_model()
    for name, arguments in steps:
        getattr(machine, name)(**arguments)
        machine.tracker_agrees_with_the_model()
    machine.teardown()


# --- lost trial permits ----------------------------------------------------------------------
#
# HEALTH: "a trial permit that is not handed back within trial_timeout_s (300 s) is presumed
# lost and its slot freed; its late answer is no trial either": whichever call next asks the
# breaker (allow, record, a release), not only the next allow().


def _half_open(config: HealthConfig | None = None) -> tuple[HealthTracker, FakeClock]:
    clock = FakeClock()
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    for _ in range(tracker.config.consecutive_failures):
        tracker.record("p", duration_s=0.25, status_code=500)
    clock.advance(tracker.config.open_cooldown_s)
    return tracker, clock


def test_a_late_trial_answer_is_no_trial() -> None:
    tracker, clock = _half_open()
    trial = tracker.allow("p")
    clock.advance(301.0)  # past trial_timeout_s: presumed lost
    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 0 of 3 passed"

    tracker.record("p", duration_s=301.0, status_code=200, permit=trial)  # its late answer

    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 0 of 3 passed"


def test_a_record_without_a_permit_is_taken_for_the_oldest_trial_still_out() -> None:
    tracker, clock = _half_open(HealthConfig(trials_at_once=2, trial_timeout_s=6.0))
    lost = tracker.allow("p")
    clock.advance(3.0)
    out = tracker.allow("p")
    clock.advance(3.0)  # the first is lost, the second still out
    assert lost and out
    assert tracker.status("p").reasons[0] == "circuit half-open: 1 trial call in flight, 0 of 3 passed"

    tracker.record("p", duration_s=0.25)  # no permit: the result of the oldest trial out
    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"
    tracker.record("p", duration_s=3.0, permit=out)  # so the second's own answer is no trial
    assert tracker.status("p").reasons[0] == "circuit half-open: 0 trial calls in flight, 1 of 3 passed"


# --- real threads ----------------------------------------------------------------------------


def test_threads_never_hold_more_trials_than_allowed_and_in_flight_returns_to_zero() -> None:
    """Four threads begin and end calls against one half-open circuit. A trial permit is
    held from ``begin`` until its ``record``; the answers give no verdict (429, cancelled)
    or pass a trial that never closes the circuit, so every permit belongs to the same
    half-open period and at most ``trials_at_once`` may be held at any moment."""
    clock = FakeClock()
    config = HealthConfig(consecutive_failures=1, trials_at_once=2, half_open_trials=1_000_000)
    tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
    tracker.record("p", duration_s=0.25, status_code=500)
    clock.advance(config.open_cooldown_s)
    assert tracker.status("p").circuit == "half_open"

    guard = threading.Lock()
    held = [0]
    peak = [0]
    granted = [0]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(seed: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(1500):
                permit = tracker.begin("p")
                if permit:  # held from here until its record: count it, then give others a turn
                    with guard:
                        held[0] += 1
                        granted[0] += 1
                        peak[0] = max(peak[0], held[0])
                    time.sleep(0)
                    with guard:
                        held[0] -= 1
                kind = (i + seed) % 3
                if kind == 0:
                    tracker.record("p", duration_s=0.25, status_code=429, retry_after_s=1, permit=permit)
                elif kind == 1:
                    tracker.record("p", duration_s=0.25, error=asyncio.CancelledError(), permit=permit)
                else:
                    tracker.record("p", duration_s=0.25, status_code=200, permit=permit)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    assert 0 < granted[0] < 4 * 1500  # some calls went, some were refused
    assert 1 <= peak[0] <= config.trials_at_once
    health = tracker.status("p")
    assert health.circuit == "half_open"
    assert health.in_flight == 0
    assert health.reasons[0].startswith("circuit half-open: 0 trial calls in flight, ")
