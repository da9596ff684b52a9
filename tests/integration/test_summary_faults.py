"""A backend that is down, slow, failing, or talking nonsense: the summary still answers
200 within a few times the deadline, from the last good value or the local registry,
and says what happened; /ready reports it without failing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.catalogue import Category
from app.main import create_app
from app.settings import Settings
from app.summary.backend import PING_TIMEOUT_S
from app.summary.promql import packs_for
from app.summary.service import FLEET_PACK
from tests.support.faulty_backend import FaultyBackend, Reply, envelope

DEADLINE_S = 0.5
#: A summary makes one batch of queries under the deadline; a bound of several times it
#: holds on a loaded machine, and still fails a summary that waits for the 5 s slow reply.
BOUND_S = 5 * DEADLINE_S
SUMMARY = "/prometheus/metrics/summary"
VECTOR = envelope(result=[{"metric": {"provider": "alpha", "model": "m1"}, "value": [0, "7"]}])


@pytest.fixture
def fake() -> Iterator[FaultyBackend]:
    with FaultyBackend(Reply(body=VECTOR)) as backend:
        yield backend


@pytest.fixture
def client(fake: FaultyBackend) -> Iterator[TestClient]:
    settings = Settings(prometheus_url=fake.url, query_deadline_seconds=DEADLINE_S, query_cache_seconds=0,
                        access_log=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def timed_summary(client: TestClient) -> tuple[dict, float]:
    started = time.monotonic()
    response = client.get(SUMMARY, params={"category": "models"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response.json(), elapsed


def kinds(summary: dict) -> set[str]:
    return {error["kind"] for error in summary["errors"]}


def test_healthy_fake_is_the_source(client: TestClient) -> None:
    summary, _ = timed_summary(client)
    assert summary["source"] == "prometheus"
    assert summary["stale"] is False
    assert summary["errors"] == []


def test_backend_down_answers_from_the_local_registry(client: TestClient, fake: FaultyBackend) -> None:
    fake.stop()
    summary, elapsed = timed_summary(client)
    assert elapsed < BOUND_S
    assert summary["source"] == "local"
    assert {"unreachable", "fallback"} <= kinds(summary)


def test_slow_backend_is_cut_at_the_deadline(client: TestClient, fake: FaultyBackend) -> None:
    fake.reply = Reply(body=VECTOR, delay_s=5.0)
    summary, elapsed = timed_summary(client)
    assert elapsed < BOUND_S
    assert "timeout" in kinds(summary)
    assert summary["source"] == "local"


def test_5xx_after_a_good_answer_serves_the_last_good_value_as_stale(client: TestClient, fake: FaultyBackend) -> None:
    good, _ = timed_summary(client)
    fake.reply = Reply(status=503, body=b"<html>upstream down</html>", content_type="text/html")
    summary, elapsed = timed_summary(client)
    assert elapsed < BOUND_S
    assert summary["stale"] is True
    assert summary["source"] == "prometheus"
    assert "http_error" in kinds(summary)
    assert summary["metrics"]["models"] == good["metrics"]["models"]


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(body=b"this is not json"), "garbage"),
        (Reply(body=b"[1, 2, 3]"), "garbage"),
        (Reply(body=b'{"status": "success", "data": 42}'), "partial"),
        (Reply(body=VECTOR, cut_at=20), "partial"),
    ],
)
def test_garbage_never_becomes_a_5xx(client: TestClient, fake: FaultyBackend, reply: Reply, kind: str) -> None:
    timed_summary(client)  # one good answer first
    fake.reply = reply
    summary, elapsed = timed_summary(client)
    assert elapsed < BOUND_S
    assert kind in kinds(summary)
    assert summary["stale"] is True


def test_warnings_are_reported_as_partial(client: TestClient, fake: FaultyBackend) -> None:
    fake.reply = Reply(body=envelope(result=[], warnings=["too many samples, result truncated"]))
    summary, _ = timed_summary(client)
    assert "partial" in kinds(summary)
    assert any("truncated" in error["message"] for error in summary["errors"])


def test_backend_errors_are_merged_not_repeated_per_query(client: TestClient, fake: FaultyBackend) -> None:
    fake.stop()
    summary = client.get(SUMMARY).json()  # every category: a dozen requests, one error
    unreachable = [error for error in summary["errors"] if error["kind"] == "unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["query"] == ", ".join([*packs_for(list(Category)), FLEET_PACK])
    summary, _ = timed_summary(client)
    unreachable = [error for error in summary["errors"] if error["kind"] == "unreachable"]
    assert len(unreachable) == 1
    # The models category's requests: each of its queries is by model, and travels alone.
    assert unreachable[0]["query"] == ", ".join(packs_for([Category.MODELS]))
    assert "inference_buckets" in unreachable[0]["query"]


def test_ready_reports_a_down_backend_without_failing(client: TestClient, fake: FaultyBackend) -> None:
    fake.reply = Reply()  # answers vector(1) with 1
    assert client.get("/ready").json()["backend"]["reachable"] is True
    fake.stop()
    response = client.get("/ready")
    assert response.status_code == 200
    backend = response.json()["backend"]
    assert backend["configured"] is True and backend["reachable"] is False
    assert backend["error"].startswith("unreachable")


def test_bearer_token_reaches_the_backend(fake: FaultyBackend) -> None:
    settings = Settings(prometheus_url=fake.url, prometheus_bearer_token="backend-secret", access_log=False)
    TestClient(create_app(settings)).get(SUMMARY, params={"category": "models"})
    assert fake.requests[-1].headers["authorization"] == "Bearer backend-secret"


def _series(value: object, **labels: object) -> dict:
    return {"metric": {"provider": "alpha", "model": "m1", **labels}, "value": [0, value]}


#: Answers no real backend sends, each of which once turned into a 500.
HOSTILE = {
    "deep_nesting": b'{"status": "success", "data": {"resultType": "vector", "result": '
                    + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    "deep_nesting_not_an_object": b"[" * 100_000 + b"]" * 100_000,
    "400_digit_value": envelope(result=[{"metric": {}, "value": [0, 0]}]).replace(
        b"[0, 0]", b"[0, " + b"9" * 400 + b"]"),
    "400_digit_string": envelope(result=[_series("9" * 400)]),
    "inf_string": envelope(result=[_series("Inf")]),
    "minus_inf_string": envelope(result=[_series("-Inf", le="+Inf")]),
    "nan_strings": envelope(result=[_series("NaN"), _series("nan", le="1")]),
    "warnings_not_a_list": envelope(result=[], warnings=5),
    "labels_not_strings": envelope(result=[{"metric": {"provider": {"nested": [1]}, "le": 3}, "value": [0, "1"]}]),
    "metric_null": envelope(result=[{"metric": None, "value": [0, "1"]}]),
    "value_null": envelope(result=[{"metric": {}, "value": None}]),
    "value_object": envelope(result=[{"metric": {}, "value": [0, {"x": 1}]}]),
    "result_an_object": envelope(result={"a": 1}),
    "result_type_a_list": json.dumps({"status": "success", "data": {"resultType": [], "result": []}}).encode(),
    "status_a_list": json.dumps({"status": ["success"], "data": {}}).encode(),
    "error_type_an_object": json.dumps({"status": "error", "errorType": {"a": 1}, "error": [1]}).encode(),
    "is_partial_a_string": envelope(result=[], isPartial="yes"),
}
#: Answers that read as numbers but make no sense as figures: no 500 either, and no
#: NaN or Infinity in the JSON (strict parsers refuse them).
ODD = {
    "huge_values_overflow_in_sums": envelope(result=[_series("1e308", status=s, le=le)
                                                     for s in ("success", "server_error") for le in ("1", "+Inf")]),
    "le_not_a_number": envelope(result=[_series("1", le="abc"), _series("2", le="+Inf")]),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_answers_never_become_a_5xx(client: TestClient, fake: FaultyBackend, body: bytes) -> None:
    fake.reply = Reply(body=body)
    started = time.monotonic()
    responses = [client.get(SUMMARY), client.get("/ready"),
                 client.get("/prometheus/metrics/health", params={"source": "fleet"})]
    # Two batches under the deadline and a ping under its timeout, several times over.
    assert time.monotonic() - started < 5 * (2 * DEADLINE_S + PING_TIMEOUT_S)
    assert [response.status_code for response in responses] == [200, 200, 200], responses[0].text
    summary, ready, fleet = (response.json() for response in responses)
    assert summary["errors"] and fleet["errors"], (summary["errors"], fleet["errors"])
    assert ready["backend"]["reachable"] is False and ready["backend"]["error"]


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} in the JSON")


@pytest.mark.parametrize("body", ODD.values(), ids=ODD.keys())
def test_odd_figures_answer_200_with_strict_json(client: TestClient, fake: FaultyBackend, body: bytes) -> None:
    fake.reply = Reply(body=body)
    for response in (client.get(SUMMARY), client.get("/prometheus/metrics/health", params={"source": "fleet"})):
        assert response.status_code == 200, response.text
        json.loads(response.text, parse_constant=_refuse)
