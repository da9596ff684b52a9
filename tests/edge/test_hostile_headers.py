"""Hostile headers at the HTTP edge: client request ids that are not safe tokens are
replaced and never reach the access log raw (SPEC section 6); wrong, missing, oversized or
non-ASCII ``Authorization`` headers get a 401, never a 500, never any part of the key, and
the token is compared in constant time.

The constant-time property is asserted on the design (every bearer token goes through
``hmac.compare_digest`` with two ``bytes``), not timed here: a measurement would be a flaky
unit test on a shared machine.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import access_log
from app.main import create_app
from app.settings import Settings
from tests.support.servers import start_service

# --- request ids --------------------------------------------------------------------------

HOSTILE_IDS: list[bytes] = [
    b"abc\ndef",
    b"abc\r\ndef",
    b"trailing-newline\n",
    b"\x1b[31mred\x1b[0m",
    b'quote"inject',
    b'"},"status":200,"x":"',
    b"back\\slash",
    b"back\\u0041slash",
    b"nul\x00byte",
    b"tab\there",
    b"del\x7f",
    "é-unicode".encode(),
    "\u2028line-separator".encode(),
    "\U0001f600-emoji".encode(),
    b"\xff\xfe-latin-1",
    b"x" * 129,
    b"x" * 10 * 1024,
    b"a.b_c-d " * 1280,  # 10 KB of almost safe characters
]


@pytest.fixture
def logged_app() -> TestClient:
    return TestClient(create_app(Settings(access_log=True)))


@pytest.mark.parametrize("incoming", HOSTILE_IDS, ids=lambda value: repr(value[:24]))
def test_unsafe_request_id_is_replaced_and_never_logged_raw(
    logged_app: TestClient, access_lines: list[str], incoming: bytes
) -> None:
    response = logged_app.get("/health", headers={"X-Request-ID": incoming})
    access_log.flush_access_logs()

    assert response.status_code == 200
    returned = response.headers["x-request-id"]
    assert returned.encode() != incoming
    assert returned.isascii() and returned.isalnum() and len(returned) <= 128
    # One request, one line, valid JSON, carrying the fresh id and nothing of the raw one.
    lines = [line for line in access_lines if line]
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["request_id"] == returned
    raw = incoming.decode("latin-1")
    assert raw not in lines[0]
    assert not any(ch in lines[0] for ch in "\n\r\x1b\x00\x7f")


def test_safe_request_id_is_kept_and_logged(logged_app: TestClient, access_lines: list[str]) -> None:
    incoming = "Trace.ID_0-" + "z" * 117  # 128 characters: the longest safe token
    response = logged_app.get("/health", headers={"X-Request-ID": incoming})
    access_log.flush_access_logs()
    assert response.headers["x-request-id"] == incoming
    assert json.loads(access_lines[-1])["request_id"] == incoming


# --- Authorization ------------------------------------------------------------------------

KEY = "tK7q9ZmW2pXv4LrB-sEcRet"
GUARDED = ["/metrics", "/prometheus/metrics/all"]

HOSTILE_AUTHORIZATION: list[bytes | None] = [
    None,
    b"",
    b"Bearer",
    b"Bearer ",
    b"Bearer wrong",
    f"Bearer {KEY[:-1]}".encode(),  # all but the last character
    f"Bearer {KEY}x".encode(),
    f"Bearer {KEY.upper()}".encode(),
    f"Basic {KEY}".encode(),
    f"{KEY}".encode(),
    f"Bearer {KEY}\x00".encode(),
    b"Bearer " + b"A" * 100 * 1024,  # 100 KB
    f"Bearer {KEY}".encode() + b"x" * 100 * 1024,
    "Bearer clé-secrète".encode(),
    "Bearer \U0001f511".encode(),
    b"Bearer \xff\xfe\x80",
    f"Bearer {KEY}é".encode(),
    f"Bearer {KEY}".encode("utf-16-le"),
    b"Bearer \x1b[31m",
]


def _key_fragments(key: str, length: int = 6) -> list[str]:
    return [key[i : i + length] for i in range(len(key) - length + 1)]


@pytest.fixture
def guarded() -> TestClient:
    return TestClient(create_app(Settings(api_key=KEY, access_log=True)), raise_server_exceptions=False)


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize("authorization", HOSTILE_AUTHORIZATION, ids=lambda v: repr(v[:24]) if v else repr(v))
def test_bad_authorization_is_401_and_leaks_no_part_of_the_key(
    guarded: TestClient,
    access_lines: list[str],
    caplog: pytest.LogCaptureFixture,
    path: str,
    authorization: bytes | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = guarded.get(path, headers=headers)
    access_log.flush_access_logs()

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="gateway-metrics"'
    assert response.json() == {"detail": "missing or invalid bearer token"}
    exposed = [response.text, *(f"{name}: {value}" for name, value in response.headers.items())]
    exposed += access_lines + [record.getMessage() for record in caplog.records]
    for fragment in _key_fragments(KEY):
        assert not any(fragment in text for text in exposed), fragment


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, Any]]]:
    """Every call of ``hmac.compare_digest`` made by the app, passed on to the real one."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    yield calls


@pytest.mark.parametrize(
    "authorization", [a for a in HOSTILE_AUTHORIZATION if a and a.lower().startswith(b"bearer ")],
    ids=lambda v: repr(v[:24]),
)
def test_every_bearer_token_is_compared_in_constant_time_as_bytes(
    guarded: TestClient, compare_digest_calls: list[tuple[Any, Any]], authorization: bytes
) -> None:
    assert guarded.get("/metrics", headers={"Authorization": authorization}).status_code == 401
    # One comparison, of two bytes objects: compare_digest's time then depends only on the
    # lengths, never on where the tokens differ, and it cannot raise the TypeError it
    # raises on non-ASCII str.
    assert len(compare_digest_calls) == 1
    given, expected = compare_digest_calls[0]
    assert type(given) is bytes and type(expected) is bytes
    assert expected == KEY.encode()


def test_the_right_key_goes_through_compare_digest_too(
    guarded: TestClient, compare_digest_calls: list[tuple[Any, Any]]
) -> None:
    assert guarded.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert compare_digest_calls == [(KEY.encode(), KEY.encode())]


@pytest.mark.parametrize("key", ["clé-secrète", "ключ-доступа", "kà", "key\u00a0"])
def test_a_non_ascii_key_is_matched_on_its_utf8_bytes(key: str) -> None:
    # A client sends the key as the UTF-8 bytes of the variable; the comparison must be
    # on the raw header bytes, not on their latin-1 decoding re-encoded (never equal), and
    # stripping must not eat a byte of a multi-byte character (0xA0 of "à").
    client = TestClient(create_app(Settings(api_key=key, access_log=False)))
    assert client.get("/metrics", headers={"Authorization": f"Bearer {key}".encode()}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {key}x".encode()}).status_code == 401


# --- the same through a real server ---------------------------------------------------------


#: h11's default limit on an incomplete request head (uvicorn without httptools).
H11_MAX_HEADER = 16 * 1024


def _raw_get(address: str, path: str, header: bytes) -> bytes:
    """The whole response to a GET carrying ``header`` as sent, byte for byte (an HTTP
    client library would refuse or re-encode most of these values)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        data = b""
        try:
            sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: edge\r\n" + header
                         + b"\r\nConnection: close\r\n\r\n")
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            # A server that rejects a request before reading all of it closes with bytes
            # still unread, and the kernel answers with a reset, which may overtake its 400.
            pass
    return data


def test_hostile_headers_through_the_console_script(tmp_path: Path) -> None:
    """The server in front (uvicorn and its HTTP parser) passes them on: still a 401 or a
    fresh id, and its log (access log and errors) holds neither the key nor a raw id."""
    service = start_service(tmp_path, env={"GATEWAY_METRICS_API_KEY": KEY, "GATEWAY_METRICS_ACCESS_LOG": "true"},
                            recipe=False)
    rejected = 0
    try:
        for authorization in HOSTILE_AUTHORIZATION:
            header = b"" if authorization is None else b"Authorization: " + authorization
            response = _raw_get(service.address, "/metrics", header)
            # The HTTP parser may answer 400 before the app sees the request: to a byte HTTP
            # forbids in a field value (NUL), and to a header over h11's 16 KB limit when it
            # arrives in more than one read. Every other value reaches the app: 401.
            if response.startswith(b"HTTP/1.1 400 ") or response == b"":  # b"": reset before its 400
                rejected += 1
                forbidden = any(byte < 0x20 and byte != 0x09 for byte in authorization or b"")
                assert forbidden or len(authorization or b"") > H11_MAX_HEADER, response
            else:
                assert response.startswith(b"HTTP/1.1 401 "), (authorization[:24] if authorization else None, response)
                assert b'www-authenticate: bearer realm="gateway-metrics"' in response.lower()
            assert not any(fragment.encode() in response for fragment in _key_fragments(KEY))
        # Header values with CR/LF cannot be sent (they end the header); the others can.
        sent_ids = [value for value in HOSTILE_IDS
                    if b"\n" not in value and b"\r" not in value and b"\x00" not in value]
        for request_id in sent_ids:
            head = _raw_get(service.address, "/health", b"X-Request-ID: " + request_id).partition(b"\r\n\r\n")[0]
            assert head.startswith(b"HTTP/1.1 200 "), (request_id[:24], head)
            returned = [line for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id:")]
            assert len(returned) == 1 and returned[0].split(b":", 1)[1].strip().isalnum(), returned
    finally:
        service.stop()  # the access log's last lines are written at exit
    log = service.log_path.read_text(encoding="latin-1")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    # Every request the app saw, plus the /health polls of the start.
    assert len(lines) >= len(HOSTILE_AUTHORIZATION) - rejected + len(sent_ids) + 1
    for fragment in _key_fragments(KEY):
        assert fragment not in log, fragment
    for request_id in sent_ids:
        assert request_id.decode("latin-1") not in log
    assert all(line["request_id"].isalnum() for line in lines)
