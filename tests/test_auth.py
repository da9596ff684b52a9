"""The optional bearer token on the metrics routes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.catalogue import Category
from app.main import create_app
from app.settings import Settings

TOKEN = "s3cret-token"
GUARDED = ["/metrics", "/prometheus/metrics/all"] + [f"/prometheus/metrics/{c.value}" for c in Category]


@pytest.fixture
def guarded() -> TestClient:
    return TestClient(create_app(Settings(api_key=TOKEN, access_log=False)))


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", f"Bearer {TOKEN}x", "Bearer"]
)
def test_missing_or_wrong_token_is_401(guarded: TestClient, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = guarded.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", GUARDED)
def test_right_token_is_served(guarded: TestClient, path: str) -> None:
    assert guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded.get(path, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_health_routes_stay_public(guarded: TestClient, path: str) -> None:
    assert guarded.get(path).status_code == 200


def test_no_token_configured_means_open(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_key_means_no_auth_and_says_so_at_startup(
    blank: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GATEWAY_METRICS_API_KEY", blank)  # an unset compose variable
    with caplog.at_level("WARNING", logger="gateway_metrics"):
        settings = Settings(access_log=False)
    assert settings.bearer_token is None
    assert any("WITHOUT authentication" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    client = TestClient(create_app(settings))
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer"}).status_code == 200


def test_a_real_key_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="gateway_metrics"):
        Settings(api_key=TOKEN)
        Settings()
    assert not caplog.records


def test_a_key_with_surrounding_whitespace_is_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_METRICS_API_KEY", f" {TOKEN}\n")  # read from a file with its newline
    client = TestClient(create_app(Settings(access_log=False)))
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
