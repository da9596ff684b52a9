"""``GET /prometheus/metrics/status`` and the standalone ``/`` redirect, over HTTP.

What the page does in a browser is tested in tests/integration/test_status_page_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tomllib
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.routers import status
from app.settings import Settings

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
