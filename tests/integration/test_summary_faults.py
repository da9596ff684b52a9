"""A backend that is down, slow, failing, or talking nonsense: the summary still answers
200 within the deadline and a little, from the last good value or the local registry,
and says what happened; /ready reports it without failing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.faulty_backend import FaultyBackend, Reply, envelope

DEADLINE_S = 0.5
#: Deadline plus what the service itself needs (local fallback, JSON) on a loaded CI box.
ALLOWANCE_S = 0.6
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
    assert elapsed < DEADLINE_S + ALLOWANCE_S
    assert summary["source"] == "local"
    assert {"unreachable", "fallback"} <= kinds(summary)


def test_slow_backend_is_cut_at_the_deadline(client: TestClient, fake: FaultyBackend) -> None:
    fake.reply = Reply(body=VECTOR, delay_s=5.0)
    summary, elapsed = timed_summary(client)
    assert elapsed < DEADLINE_S + ALLOWANCE_S
    assert "timeout" in kinds(summary)
    assert summary["source"] == "local"


def test_5xx_after_a_good_answer_serves_the_last_good_value_as_stale(client: TestClient, fake: FaultyBackend) -> None:
    good, _ = timed_summary(client)
    fake.reply = Reply(status=503, body=b"<html>upstream down</html>", content_type="text/html")
    summary, elapsed = timed_summary(client)
    assert elapsed < DEADLINE_S + ALLOWANCE_S
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
    assert elapsed < DEADLINE_S + ALLOWANCE_S
    assert kind in kinds(summary)
    assert summary["stale"] is True


def test_warnings_are_reported_as_partial(client: TestClient, fake: FaultyBackend) -> None:
    fake.reply = Reply(body=envelope(result=[], warnings=["too many samples, result truncated"]))
    summary, _ = timed_summary(client)
    assert "partial" in kinds(summary)
    assert any("truncated" in error["message"] for error in summary["errors"])


def test_backend_errors_are_merged_not_repeated_per_query(client: TestClient, fake: FaultyBackend) -> None:
    fake.stop()
    summary = client.get(SUMMARY).json()  # every category: five packs, one error
    unreachable = [error for error in summary["errors"] if error["kind"] == "unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["query"] == "system, providers, models, business, performance, fleet_health"
    summary, _ = timed_summary(client)
    unreachable = [error for error in summary["errors"] if error["kind"] == "unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["query"] == "models"  # the pack of the models category


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
