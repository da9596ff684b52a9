"""The run of passed probes (``_ProbeRun``) against its definition.

The run keeps, for each pass, when two passes from it on had been heard, so ``choose()``
answers "has the provider passed two probes in a row since its last call?" with a bisect
and a lookup. Here each answer is checked against the plain definition: the passes sent
since the latest failed probe (a failure ends the passes sent before or with it), at most
``MAX_RUN_PASSES`` of the latest sent, and of those sent at ``at`` or later, the earliest
send and the second time heard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from app.scoring.tracker import MAX_RUN_PASSES, _ProbeRun


@dataclass
class Definition:
    failed_sent: float = -math.inf
    passes: list[tuple[float, float]] = field(default_factory=list)  # (sent, heard), by send

    def failed(self, sent: float) -> None:
        if sent >= self.failed_sent:
            self.failed_sent = sent
            self.passes = [(s, h) for s, h in self.passes if s > sent]

    def passed(self, sent: float, heard: float) -> None:
        if sent < self.failed_sent:
            return
        self.passes.append((sent, heard))
        self.passes.sort(key=lambda item: item[0])  # stable: sent together, in the order they came
        self.passes = self.passes[-MAX_RUN_PASSES:]

    def first_since(self, at: float) -> float:
        return min((s for s, _ in self.passes if s >= at), default=math.inf)

    def two_heard_since(self, at: float) -> float:
        heard = sorted(h for s, h in self.passes if s >= at)
        return heard[1] if len(heard) >= 2 else math.inf


SENDS = st.integers(0, 12).map(float)  # few distinct send times: ties are common
OPERATIONS = st.lists(
    st.one_of(st.tuples(st.just("fail"), SENDS, st.just(0.0)),
              st.tuples(st.just("pass"), SENDS, st.integers(0, 6).map(float))),
    max_size=60,
)


def check(run: _ProbeRun, definition: Definition) -> None:
    for at in range(-1, 15):
        assert run.first_since(at) == definition.first_since(at), at
        assert run.two_heard_since(at) == definition.two_heard_since(at), at


@given(OPERATIONS)
def test_the_run_answers_as_its_definition(operations: list[tuple[str, float, float]]) -> None:
    run, definition = _ProbeRun(), Definition()
    for kind, sent, lag in operations:
        if kind == "fail":
            run.failed(sent)
            definition.failed(sent)
        else:
            run.passed(sent, sent + lag)
            definition.passed(sent, sent + lag)
        check(run, definition)


def test_a_run_longer_than_max_run_passes_keeps_its_latest_passes() -> None:
    run, definition = _ProbeRun(), Definition()
    for sent in range(MAX_RUN_PASSES + 8):
        heard = sent + (3.0 if sent % 2 == 0 else 0.5)  # heard out of send order
        run.passed(float(sent), heard)
        definition.passed(float(sent), heard)
    assert len(definition.passes) == MAX_RUN_PASSES
    for at in range(-1, MAX_RUN_PASSES + 10):
        assert run.first_since(at) == definition.first_since(at), at
        assert run.two_heard_since(at) == definition.two_heard_since(at), at
    # The reads begin at the 9th pass (sent at 8, heard at 11): shorter, never longer.
    assert run.two_heard_since(0) == 11.0  # the 10th pass heard at 9.5, the 9th at 11


def test_a_second_failure_sent_at_the_moment_of_the_first_ends_the_passes_sent_with_them() -> None:
    run = _ProbeRun()
    run.failed(5.0)
    run.passed(5.0, 6.0)  # sent with the failure, heard after it: kept
    assert run.first_since(0.0) == 5.0
    run.failed(5.0)  # another failure sent at that moment: the passes sent with it end
    assert run.first_since(0.0) == math.inf
