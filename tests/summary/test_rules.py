"""app.summary.rules: which recorded series a summary may read, from the backend's
/api/v1/rules answer (canned here; against the real Prometheus: tests/integration/test_fleet_rules.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from app.summary.backend import PrometheusBackend
from app.summary.promql import CALLS_RECORD, INFERENCE_RECORD
from app.summary.rules import RecordingRules, held_by_several_jobs, shared_instances
from tests.support.faulty_backend import FaultyBackend, Reply

WANTED = (CALLS_RECORD, INFERENCE_RECORD)


def rules_answer(age_s: float, interval_s: float = 15.0, health: str = "ok") -> bytes:
    evaluated = datetime.fromtimestamp(time.time() - age_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    rules = [{"name": CALLS_RECORD.record, "health": health, "type": "recording", "query": "x"},
             {"name": "job:something_else:rate5m", "health": "ok", "type": "recording", "query": "y"}]
    group = {"name": "gateway-metrics.upstream", "file": "recording.yml", "interval": interval_s,
             "lastEvaluation": evaluated, "rules": rules}
    return json.dumps({"status": "success", "data": {"groups": [group]}}).encode()


@pytest.fixture
def fake() -> Iterator[FaultyBackend]:
    with FaultyBackend(Reply(body=rules_answer(age_s=2))) as backend:
        yield backend


def probe(fake: FaultyBackend, clock: list[float] | None = None) -> RecordingRules:
    backend = PrometheusBackend(fake.url, deadline_s=2.0)
    ticks = clock if clock is not None else [0.0]
    return RecordingRules(backend, WANTED, job="gateway-metrics", clock=lambda: ticks[0])


def test_a_group_that_evaluates_is_read(fake: FaultyBackend) -> None:
    assert probe(fake).refresh() == {CALLS_RECORD.record}


def test_a_group_that_stopped_evaluating_is_not(fake: FaultyBackend) -> None:
    fake.reply = Reply(body=rules_answer(age_s=4 * 15))
    assert probe(fake).refresh() == frozenset()


def test_a_failing_rule_is_not(fake: FaultyBackend) -> None:
    fake.reply = Reply(body=rules_answer(age_s=2, health="err"))
    assert probe(fake).refresh() == frozenset()


def test_a_backend_without_the_rules_api_means_none(fake: FaultyBackend) -> None:
    fake.reply = Reply(status=404, body=b"404 page not found", content_type="text/plain")
    assert probe(fake).refresh() == frozenset()


def test_the_backend_is_asked_once_per_recheck_not_per_summary(fake: FaultyBackend) -> None:
    clock = [0.0]
    rules = probe(fake, clock)
    assert rules.refresh() == {CALLS_RECORD.record}
    asked = fake.request_count
    for _ in range(20):
        assert rules.usable() == {CALLS_RECORD.record}
    assert fake.request_count == asked
    fake.reply = Reply(body=rules_answer(age_s=600))  # the group stopped
    clock[0] += rules.recheck_s
    rules.usable()  # starts the re-check in the background
    deadline = time.monotonic() + 5
    while rules.usable() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rules.usable() == frozenset()
    assert fake.request_count == asked + 1


def test_records_of_jobs_sharing_an_instance_are_not_read() -> None:
    jobs = {"a:b:c": {"gw", "gw-models"}, "d:e:f": {"gw-models"}}
    # gw-models scrapes instance 1 as gw does: summing the two jobs would count it twice.
    assert shared_instances(jobs, {"gw": {"i1", "i2"}, "gw-models": {"i1"}}) == {"a:b:c"}
    assert shared_instances(jobs, {"gw": {"i2"}, "gw-models": {"i1"}}) == frozenset()


def test_quantile_records_of_several_jobs_are_not_read() -> None:
    # Quantiles do not add up: two jobs' p95 of one model is no p95 of the two.
    jobs = {"a:b:p95": {"gw-eu", "gw-us"}, "c:d:p95": {"gw-eu"}, "e:f:rate5m": {"gw-eu", "gw-us"}}
    assert held_by_several_jobs(jobs, ["a:b:p95", "c:d:p95", "g:h:p95"]) == {"a:b:p95"}
