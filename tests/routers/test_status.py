"""``GET /prometheus/metrics/status``, the standalone ``/`` redirect and
``GET /prometheus/metrics/trends``, over HTTP (the trends' PromQL against a real
Prometheus: tests/integration/test_status_history.py).

What the page does in a browser is tested in tests/integration/test_status_page_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tomllib
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.routers import status
from app.settings import Settings
from app.summary.promql import PACK_LABEL
from app.telemetry import Telemetry
from tests.support.faulty_backend import FaultyBackend, Reply, envelope, error_envelope

STATUS = "/prometheus/metrics/status"
ROOT = Path(__file__).resolve().parents[2]


def _inline(body: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", body, re.S)
    assert match, f"no inline <{tag}>"
    return match.group(1)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_status_page_is_one_html_document_that_loads_nothing_else(client: TestClient) -> None:
    response = client.get(STATUS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    body = response.text
    assert body.startswith("<!doctype html>")
    assert "/*SCRIPT*/" not in body and "/*STYLE*/" not in body
    assert "setInterval" in _inline(body, "script") and ".card" in _inline(body, "style")
    # No external script, style, font or image: nothing but the data calls leaves the page.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=\"(https?:)?//", body, re.I)
    assert "@import" not in body and "url(" not in _inline(body, "style")


def test_content_security_policy_admits_only_the_inlined_script_and_style(client: TestClient) -> None:
    response = client.get(STATUS)
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == _hash(_inline(response.text, "script"))
    assert policy["style-src"] == _hash(_inline(response.text, "style"))
    assert policy["connect-src"] == "'self'"
    assert policy["form-action"] == "'none'"  # the token form can never be submitted natively
    assert response.headers["referrer-policy"] == "no-referrer"


def test_page_shell_is_public_and_carries_no_data_while_the_data_needs_the_token() -> None:
    settings = Settings(api_key="status-page-secret", access_log=False)
    with TestClient(create_app(settings)) as client:
        page = client.get(STATUS)
        assert page.status_code == 200
        assert "status-page-secret" not in page.text
        for data in ("/prometheus/metrics/health", "/prometheus/metrics/summary"):
            assert client.get(data).status_code == 401
            headers = {"Authorization": "Bearer status-page-secret"}
            assert client.get(data, headers=headers).status_code == 200


def test_root_redirects_to_the_status_page_in_standalone_mode(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == STATUS
    assert client.get("/").url.path == STATUS


def test_root_redirect_keeps_the_path_the_service_is_mounted_at(settings: Settings) -> None:
    outer = FastAPI()
    outer.mount("/observability", create_app(settings))
    with TestClient(outer) as client:
        response = client.get("/observability/", follow_redirects=False)
    assert response.headers["location"] == "/observability" + STATUS


def test_embedded_routers_leave_the_gateways_root_alone(settings: Settings) -> None:
    gateway = FastAPI()
    gateway.state.settings = settings
    gateway.include_router(status.router)
    client = TestClient(gateway)
    assert client.get(STATUS).status_code == 200
    assert client.get("/", follow_redirects=False).status_code == 404


def test_status_routes_are_registered_after_the_service_routes(settings: Settings) -> None:
    # Routes match in registration order: placed last, these add nothing to the others.
    routes = [getattr(route, "original_router", route) for route in create_app(settings).routes]
    assert routes[-2:] == [status.router, status.standalone_router]


def test_page_files_ship_as_package_data() -> None:
    static = resources.files("app") / status.STATIC
    shipped = {entry.name for entry in static.iterdir() if entry.is_file()}
    assert {"status.html", "status.css", "status.js"} <= shipped
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    globs = [pattern.removeprefix(f"{status.STATIC}/") for pattern in package_data if pattern.startswith(status.STATIC)]
    for name in shipped:
        assert any(Path(name).match(pattern) for pattern in globs), f"{name} is not in package-data"


# --- GET /prometheus/metrics/trends: the history the page's charts open with ---------------

TRENDS = "/prometheus/metrics/trends"
#: Snapshots are taken by hand on a hand-moved clock: the background thread never ticks.
QUIET_SNAPSHOTS = 300.0
STEP_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def quiet_settings(**overrides: object) -> Settings:
    return Settings(access_log=False, snapshot_interval_seconds=QUIET_SNAPSHOTS, **overrides)  # type: ignore[arg-type]


def history_client(settings: Settings, snapshots: int, requests_per_snapshot: int = 5) -> Iterator[TestClient]:
    """A service with ``snapshots`` snapshots ``STEP_S`` apart after its first, with
    ``requests_per_snapshot`` requests and an upstream call between each two."""
    telemetry = Telemetry(settings)
    clock = Clock()
    telemetry.snapshots.clock = clock
    with TestClient(create_app(settings, telemetry)) as client:  # the lifespan takes the first
        for _ in range(snapshots):
            for _ in range(requests_per_snapshot):
                client.get("/health")
            telemetry.record_upstream_call("openrouter", "gpt-4o", duration_s=0.2)
            clock.now += STEP_S
            telemetry.snapshots.take()
        yield client


@pytest.fixture
def with_history() -> Iterator[TestClient]:
    yield from history_client(quiet_settings(), snapshots=12)


def test_trends_answer_the_local_history_at_once(with_history: TestClient) -> None:
    response = with_history.get(TRENDS)
    assert response.status_code == 200
    trends = response.json()
    assert trends["source"] == "local" and trends["errors"] == [] and trends["note"] is None
    assert (trends["span_seconds"], trends["step_seconds"], trends["window_seconds"]) == (900, 5, 300)
    times = trends["times"]
    assert len(times) == 13  # the lifespan's snapshot and the 12 taken after it
    assert [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)] == [STEP_S] * 12
    assert abs(times[-1] - datetime.fromisoformat(trends["timestamp"]).timestamp()) < 1.0
    # The first snapshot has nothing before it to take a rate from: no data, not 0.
    assert trends["requests_per_second"][0] is None and trends["p95_ms"][0] is None
    # Each later point: all the requests since the first snapshot over the time since it.
    for index in range(1, 13):
        assert trends["requests_per_second"][index] == pytest.approx(5 / STEP_S)
        assert trends["p95_ms"][index] > 0
    assert list(trends["health_scores"]) == ["openrouter"]
    assert trends["health_scores"]["openrouter"][1:] == [1.0] * 12


def test_a_trend_point_takes_its_rate_over_the_window_asked(with_history: TestClient) -> None:
    trends = with_history.get(TRENDS, params={"window_seconds": 10}).json()
    assert trends["window_seconds"] == 10
    # The second point's baseline is the first snapshot, 5 s before it (the oldest, as a
    # summary's would be); every later point's is the snapshot 10 s before it.
    assert trends["requests_per_second"][1:] == pytest.approx([5 / STEP_S] * 12)
    assert trends["requests_per_second"][0] is None


def test_trends_keep_a_point_per_step_newest_included(with_history: TestClient) -> None:
    trends = with_history.get(TRENDS, params={"step_seconds": 15}).json()
    times = trends["times"]
    assert trends["step_seconds"] == 15 and len(times) == 5  # 60 s of history: 13 snapshots, every third
    assert all(b - a >= 15 for a, b in zip(times, times[1:], strict=False))
    # The newest snapshot is the newest point (times are converted to Unix seconds per answer).
    assert times[-1] == pytest.approx(with_history.get(TRENDS).json()["times"][-1], abs=0.5)


def test_trends_leave_out_what_is_older_than_the_span(with_history: TestClient) -> None:
    trends = with_history.get(TRENDS, params={"span_seconds": 60}).json()
    assert len(trends["times"]) == 13  # the first snapshot is exactly 60 s old
    trends = with_history.get(TRENDS, params={"span_seconds": 60, "step_seconds": 20}).json()
    assert [round(b - a) for a, b in zip(trends["times"], trends["times"][1:], strict=False)] == [20, 20, 20]


def test_a_history_older_than_the_span_is_empty_and_says_why() -> None:
    settings = quiet_settings()
    telemetry = Telemetry(settings)
    clock = Clock()
    telemetry.snapshots.clock = clock
    with TestClient(create_app(settings, telemetry)) as client:
        clock.now += 120
        trends = client.get(TRENDS, params={"span_seconds": 60}).json()
    assert trends["times"] == [] and trends["requests_per_second"] == [] and trends["health_scores"] == {}
    assert "no history yet" in trends["note"]


def test_too_many_points_is_a_422_naming_the_least_step(client: TestClient) -> None:
    response = client.get(TRENDS, params={"span_seconds": 900, "step_seconds": 1})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "step_seconds"]
    assert "more than 450 points" in error["msg"] and "at least 2" in error["msg"]
    assert client.get(TRENDS, params={"span_seconds": 900, "step_seconds": 2}).status_code == 200


@pytest.mark.parametrize(("name", "value"), [
    ("span_seconds", "59"), ("span_seconds", "3601"), ("span_seconds", "ten"),
    ("step_seconds", "0"), ("step_seconds", "601"), ("window_seconds", "9"), ("window_seconds", "3601"),
    ("source", "prometheus"),
])
def test_an_out_of_range_parameter_is_a_422_naming_it(client: TestClient, name: str, value: str) -> None:
    response = client.get(TRENDS, params={name: value})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


def test_trends_need_the_token_when_one_is_set() -> None:
    with TestClient(create_app(quiet_settings(api_key="trends-secret"))) as client:
        assert client.get(TRENDS).status_code == 401
        assert client.get(TRENDS, headers={"Authorization": "Bearer trends-secret"}).status_code == 200


MATRIX = [{"metric": {PACK_LABEL: "trend_requests"}, "values": [[1000, "2.5"], [1005, "3"]]}]


@pytest.mark.parametrize(("reply", "kind"), [
    (Reply(status=503, body=error_envelope("timeout", "query timed out")), "backend_timeout"),
    (Reply(body=b"<html>not prometheus</html>", content_type="text/html"), "garbage"),
    (Reply(body=envelope("vector")), "garbage"),  # an instant answer to a range query
    (Reply(body=envelope("matrix", [{"metric": {}, "values": [[1000, "+Inf"]]}])), "garbage"),
    (None, "unreachable"),
])
def test_a_failing_backend_falls_back_to_the_local_history_with_the_reason(reply: Reply | None, kind: str) -> None:
    with FaultyBackend() as fake:
        if reply is None:
            fake.stop()
        else:
            fake.reply = reply
        for client in history_client(quiet_settings(prometheus_url=fake.url, query_deadline_seconds=2.0),
                                     snapshots=3):
            response = client.get(TRENDS)
    assert response.status_code == 200
    trends = response.json()
    assert trends["source"] == "local" and len(trends["times"]) == 4
    assert [error["kind"] for error in trends["errors"]] == [kind, "fallback"]
    assert trends["errors"][0]["message"]


def test_backend_warnings_are_reported_beside_its_history() -> None:
    with FaultyBackend(Reply(body=envelope("matrix", MATRIX, warnings=["some storage was slow"]))) as fake:
        with TestClient(create_app(quiet_settings(prometheus_url=fake.url))) as client:
            trends = client.get(TRENDS, params={"step_seconds": 5}).json()
        [request] = [seen for seen in fake.requests if seen.path == "/api/v1/query_range"]
    assert trends["source"] == "prometheus"
    assert trends["times"] == [1000.0, 1005.0] and trends["requests_per_second"] == [2.5, 3.0]
    assert trends["p95_ms"] == [None, None] and trends["health_scores"] == {}
    assert [(error["kind"], error["message"]) for error in trends["errors"]] == [("partial", "some storage was slow")]
    assert float(request.form["end"]) - float(request.form["start"]) == 900
    assert float(request.form["end"]) % 5 == 0 and request.form["step"] == "5"


def test_source_local_reads_the_local_history_even_with_a_backend() -> None:
    with FaultyBackend() as fake:
        for client in history_client(quiet_settings(prometheus_url=fake.url), snapshots=2):
            trends = client.get(TRENDS, params={"source": "local"}).json()
        assert fake.request_count == 0 or all(seen.path != "/api/v1/query_range" for seen in fake.requests)
    assert trends["source"] == "local" and trends["errors"] == [] and len(trends["times"]) == 3
