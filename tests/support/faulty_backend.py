"""A deliberately broken ``/api/v1/query`` server, for fault tests only.

Healthy paths are tested against the real Prometheus and VictoriaMetrics; this server
plays the failures they cannot be made to produce on demand: slowness, 5xx, garbage, cut
bodies, warnings. It also records every request, headers included.

    with FaultyBackend() as fake:                       # answers vector(1) until told otherwise
        fake.reply = Reply(status=502, body=b"<html>bad gateway</html>", content_type="text/html")
        fake.reply = Reply(delay_s=5)                   # slow past any test deadline
        fake.replies["vector(2)"] = Reply(hold=event)   # that query only: held until event is set
        fake.request_count, fake.requests[-1].headers["authorization"]
        fake.stop()                                     # from now on, connections are refused
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


def envelope(result_type: str = "vector", result: Any = None, **extra: Any) -> bytes:
    """A successful Prometheus API answer; ``extra`` adds fields such as ``warnings``."""
    if result is None:
        result = [{"metric": {}, "value": [0, "1"]}]
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}, **extra}).encode()


def error_envelope(error_type: str, error: str) -> bytes:
    """A Prometheus API error answer, as sent with 400, 422 or 503."""
    return json.dumps({"status": "error", "errorType": error_type, "error": error}).encode()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: bytes = envelope()
    content_type: str = "application/json"
    delay_s: float = 0.0  # wait before answering: a slow backend
    cut_at: int | None = None  # announce the whole body's length, send this many bytes, hang up
    hold: threading.Event | None = None  # wait until it is set (or the server stops) before answering


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    form: dict[str, str]  # query string and form body together


def read_request(handler: BaseHTTPRequestHandler) -> SeenRequest:
    """What ``handler``'s request carries: its body read, its query string and form merged."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length).decode("utf-8", "replace") if length else ""
    url = urlsplit(handler.path)
    return SeenRequest(method=handler.command, path=url.path,
                       headers={name.lower(): value for name, value in handler.headers.items()},
                       form=dict(parse_qsl(url.query) + parse_qsl(body)))


class FaultyBackend:
    """A threaded HTTP server on a free loopback port answering every request with ``reply``,
    or a query named in ``replies`` with its own."""

    def __init__(self, reply: Reply = Reply()) -> None:
        self.reply = reply
        self.replies: dict[str, Reply] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # stop() must not wait for a sleeping handler
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="faulty-backend")
        self._thread.start()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real backend

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # and the client's delayed ACK add 40 ms to every small answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with backend._lock:
                    backend._connections.add(self.connection)

            def finish(self) -> None:
                with backend._lock:
                    backend._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                request = read_request(self)
                backend._record(request)
                reply = backend.replies.get(request.form.get("query", ""), backend.reply)
                if reply.delay_s and backend._stopping.wait(reply.delay_s):
                    return
                if reply.hold is not None:
                    while not reply.hold.wait(0.05):
                        if backend._stopping.is_set():
                            return
                payload = reply.body if reply.cut_at is None else reply.body[: reply.cut_at]
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first: that is what slow replies are for
                if reply.cut_at is not None:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    def stop(self) -> None:
        """Stop serving and close the port (connections are refused from now on)."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        # Kept-alive connections would go on being served: a stopped backend hangs up.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._stopping.is_set():
            self.stop()
