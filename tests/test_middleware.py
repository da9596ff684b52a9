"""The ASGI middleware: route templates, streams, exceptions, request ids, access log."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import string
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import access_log
from app import telemetry as telemetry_module
from app.catalogue import Category
from app.middleware import MetricsMiddleware
from tests.conftest import sample


class Boom(RuntimeError):
    pass


def gateway_app(access_log: bool = False) -> FastAPI:
    app = FastAPI()
    items = FastAPI()

    @app.get("/v1/keys/{key_id}")
    def get_key(key_id: str) -> dict[str, str]:
        return {"key_id": key_id}

    @app.get("/boom")
    def boom() -> None:
        raise Boom("upstream exploded")

    @app.get("/stream")
    def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0.05)
                yield b"data: token\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        request.state.user_id = "user-42"
        return {"ok": "yes"}

    @app.get("/in-flight")
    def in_flight() -> dict[str, float]:
        text = "".join(
            line for line in _scrape_lines() if line.startswith("http_requests_in_flight{")
        )
        families = text_string_to_metric_families(text + "\n")
        return {
            s.labels["endpoint"]: s.value for f in families for s in f.samples if s.labels["method"] == "GET"
        }

    @app.get("/custom-id")
    def custom_id() -> StreamingResponse:
        return StreamingResponse(iter([b"x"]), headers={"X-Request-ID": "from-the-app"})

    @items.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.mount("/v2", items)
    app.add_middleware(MetricsMiddleware, access_log=access_log)
    return app


def _scrape_lines() -> list[str]:
    from prometheus_client import generate_latest

    registry = telemetry_module.default().metrics.category_registries[Category.SYSTEM]
    return generate_latest(registry).decode().splitlines(keepends=True)


@pytest.fixture
def gateway() -> TestClient:
    return TestClient(gateway_app(), raise_server_exceptions=False)


def requests(method: str, endpoint: str, status: str) -> float:
    return sample("http_requests_total", {"method": method, "endpoint": endpoint, "status_code": status})


def test_requests_are_labelled_by_route_template(gateway: TestClient) -> None:
    for key in ("a1", "b2", "c3"):
        assert gateway.get(f"/v1/keys/{key}").status_code == 200
    assert requests("GET", "/v1/keys/{key_id}", "200") == 3
    assert sample("http_requests_total", {"method": "GET", "endpoint": "/v1/keys/a1", "status_code": "200"}) == 0


def test_mounted_app_routes_carry_the_mount_prefix(gateway: TestClient) -> None:
    gateway.get("/v2/items/7")
    assert requests("GET", "/v2/items/{item_id}", "200") == 1


def test_unmatched_paths_share_one_series(gateway: TestClient) -> None:
    rng = random.Random(1)
    paths = ["/" + "".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(300)]
    for path in paths:
        gateway.get(path)
    assert requests("GET", "unmatched", "404") == 300
    text = "".join(_scrape_lines())
    assert not any(path in text for path in paths)


def test_unknown_method_records_as_other(gateway: TestClient) -> None:
    gateway.request("BREW", "/v1/keys/k")
    assert requests("OTHER", "/v1/keys/{key_id}", "405") == 1


def test_exception_counts_as_500_and_exception(gateway: TestClient) -> None:
    labels = {"method": "GET", "endpoint": "/boom", "exception_type": "Boom"}
    assert gateway.get("/boom").status_code == 500
    assert sample("http_exceptions_total", labels) == 1
    assert requests("GET", "/boom", "500") == 1


def test_stream_is_measured_to_its_last_byte(gateway: TestClient) -> None:
    labels = {"method": "GET", "endpoint": "/stream"}
    response = gateway.get("/stream")
    assert response.content.count(b"token") == 3
    assert sample("http_request_duration_seconds_count", labels) == 1
    assert sample("http_request_duration_seconds_sum", labels) >= 0.15


def test_in_flight_counts_the_request_being_served(gateway: TestClient) -> None:
    assert gateway.get("/in-flight").json()["/in-flight"] == 1.0
    idle = [line for line in _scrape_lines() if line.startswith('http_requests_in_flight{endpoint="/in-flight"')]
    assert idle == ['http_requests_in_flight{endpoint="/in-flight",method="GET"} 0.0\n']


# --- request ids -------------------------------------------------------------------------

@pytest.mark.parametrize("incoming", ["abc-123", "trace.id_0", "x" * 128])
def test_safe_request_id_is_echoed(gateway: TestClient, incoming: str) -> None:
    assert gateway.get("/v1/keys/k", headers={"X-Request-ID": incoming}).headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["has space", "quote\"inject", "x" * 129, "", "semi;colon", "é"])
def test_unsafe_request_id_is_replaced(gateway: TestClient, incoming: str) -> None:
    response = gateway.get("/v1/keys/k", headers={"X-Request-ID": incoming.encode("utf-8")})
    returned = response.headers["x-request-id"]
    assert returned != incoming
    assert returned.isalnum() and 16 <= len(returned) <= 64


def test_request_ids_are_unique(gateway: TestClient) -> None:
    ids = {gateway.get("/v1/keys/k").headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50


def test_one_request_id_header_even_if_the_app_sets_one(gateway: TestClient) -> None:
    response = gateway.get("/custom-id", headers={"X-Request-ID": "mine"})
    assert response.headers.get_list("x-request-id") == ["mine"]


# --- access log --------------------------------------------------------------------------

def test_access_log_line_has_the_fields(access_lines: list[str]) -> None:
    client = TestClient(gateway_app(access_log=True))
    client.get("/v1/keys/secret-id?x=1", headers={"User-Agent": "pytest-agent", "X-Request-ID": "req-1"})
    client.get("/whoami")
    access_log.flush_access_logs()
    first, second = (json.loads(line) for line in access_lines[-2:])
    assert set(first) == {"ts", "request_id", "method", "route", "raw_path", "status", "latency_ms",
                          "user_id", "ip", "user_agent", "bytes"}
    assert first["request_id"] == "req-1"
    assert first["method"] == "GET"
    assert first["route"] == "/v1/keys/{key_id}"
    assert first["raw_path"] == "/v1/keys/secret-id"
    assert first["status"] == 200
    assert first["user_agent"] == "pytest-agent"
    assert first["bytes"] == len(b'{"key_id":"secret-id"}')
    assert first["latency_ms"] > 0
    assert first["user_id"] is None
    assert second["user_id"] == "user-42"


def test_access_line_escapes_hostile_values() -> None:
    line = access_log.access_line(
        (1.0, "r", "GET", "unmatched", '/a"b\\c\n', 404, 0.001, 'u"1', None, "agent\u2028\x00", 0)
    )
    parsed = json.loads(line)
    assert parsed["raw_path"] == '/a"b\\c\n'
    assert parsed["user_agent"] == "agent\u2028\x00"
    assert "\n" not in line


def must_not_run(*_: object) -> None:
    raise AssertionError("access fields gathered while the access log is off")


def test_access_log_off_builds_nothing(access_lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.middleware._access_fields", must_not_run)
    TestClient(gateway_app(access_log=False)).get("/v1/keys/k")
    access_log.flush_access_logs()
    assert access_lines == []


def test_access_logger_below_info_builds_nothing(access_lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.middleware._access_fields", must_not_run)
    logger = logging.getLogger(access_log.ACCESS_LOGGER)
    client = TestClient(gateway_app(access_log=True))
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        client.get("/v1/keys/k")
    finally:
        logger.setLevel(level)
    access_log.flush_access_logs()
    assert access_lines == []


def test_pending_access_lines_are_written_at_shutdown(access_lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn ends the process with the SIGTERM it caught once the lifespan has shut down:
    # exit handlers never run, so the lifespan's end is the last chance to write them.
    monkeypatch.setattr(access_log.AccessLog.__init__, "__defaults__", (None, 64, 3600.0))
    with TestClient(gateway_app(access_log=True)) as client:
        client.get("/v1/keys/k")
        assert access_lines == []  # an hour's delay: still pending
    assert len(access_lines) == 1 and json.loads(access_lines[0])["route"] == "/v1/keys/{key_id}"


def test_a_dropped_access_log_writes_its_pending_lines(access_lines: list[str]) -> None:
    log = access_log.AccessLog(max_delay_s=3600.0)
    log.add((1.0, "r", "GET", "/", "/", 200, 0.001, None, None, None, 0))
    del log
    gc.collect()
    assert len(access_lines) == 1


def test_access_lines_leave_in_batches_and_on_a_timer(access_lines: list[str]) -> None:
    log = access_log.AccessLog(max_lines=3, max_delay_s=0.05)
    fields = (1.0, "r", "GET", "/", "/", 200, 0.001, None, None, None, 0)
    for _ in range(7):
        log.add(fields)
    assert len(access_lines) == 6  # two full batches; one line waits

    async def wait_for_timer() -> None:
        log.add(fields)  # first line of a batch inside a loop arms the timer
        for _ in range(100):
            if len(access_lines) == 8:
                return
            await asyncio.sleep(0.01)

    asyncio.run(wait_for_timer())
    assert len(access_lines) == 8
    assert all(json.loads(line)["status"] == 200 for line in access_lines)


def test_plain_starlette_routes_are_templated_too(gateway: TestClient) -> None:
    gateway.get("/openapi.json")
    assert requests("GET", "/openapi.json", "200") == 1


# --- unhandled exceptions ------------------------------------------------------------------


@pytest.mark.parametrize("incoming", [None, "req-500"])
def test_the_500_of_an_unhandled_exception_carries_the_logged_request_id(
    access_lines: list[str], incoming: str | None
) -> None:
    client = TestClient(gateway_app(access_log=True), raise_server_exceptions=False)
    response = client.get("/boom", headers={"X-Request-ID": incoming} if incoming else {})
    access_log.flush_access_logs()
    line = json.loads(access_lines[-1])
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers.get_list("x-request-id") == [line["request_id"]]
    assert line["request_id"] == (incoming or line["request_id"])
    assert line["status"] == 500 and line["bytes"] == len(b"Internal Server Error")


def test_the_exception_still_reaches_the_server_once() -> None:
    client = TestClient(gateway_app())  # raise_server_exceptions: the server sees the error
    with pytest.raises(Boom):
        client.get("/boom")


def test_an_app_with_its_own_500_handler_answers_itself() -> None:
    app = gateway_app()
    calls: list[str] = []

    @app.exception_handler(Exception)
    async def own_handler(request: Request, exc: Exception) -> StreamingResponse:
        calls.append(request.state.request_id)
        return StreamingResponse(iter([b"ours"]), status_code=500,
                                 headers={"X-Request-ID": request.state.request_id})

    response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-ID": "own"})
    assert response.text == "ours" and response.headers["x-request-id"] == "own"
    assert calls == ["own"]  # called once
