"""The pure ASGI middleware: HTTP metrics, request ids and the JSON access log.

Per request it records ``http_requests_total``, ``http_request_duration_seconds`` (to the
last byte of the response, so streams are measured whole) and, on an exception,
``http_exceptions_total``, all labelled by the matched route template, never the raw
path; a request no route matched is ``endpoint="unmatched"``. ``http_requests_in_flight``
costs the request nothing but a dict insert: the gauge is computed at scrape time from
the requests being served (the route is known by then, the router has matched it).

Add it to any ASGI app::

    app.add_middleware(MetricsMiddleware)            # FastAPI / Starlette
    app = MetricsMiddleware(app, access_log=False)   # any ASGI app
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter, time
from typing import Any

from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessFields, AccessLog
from app.http_stats import HTTP_STATS
from app.recording import record_http_exception
from app.request_id import HEADER as REQUEST_ID_HEADER
from app.request_id import new_request_id, safe_request_id

UNMATCHED = "unmatched"

#: Requests being served now, by an id of their own: (scope, root path on entry).
_ACTIVE: dict[int, tuple[Scope, str]] = {}


def route_template(scope: Scope, entry_root_path: str = "") -> str:
    """The template of the route that served ``scope`` (``/v1/keys/{key_id}``)."""
    route = scope.get("route")
    if route is None:
        route = _route_of_endpoint(scope)
        if route is None:
            return UNMATCHED
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if type(path) is not str:
        return UNMATCHED
    root_path = scope.get("root_path", "")
    if root_path == entry_root_path and type(route) is not Mount:
        return path  # the common case: a route of the app the middleware wraps
    # Routes inside a Mount match the path below it; the mount's prefix shows in root_path.
    prefix = root_path[len(entry_root_path) :] if root_path.startswith(entry_root_path) else ""
    if isinstance(route, Mount):  # a mounted app that is not a router: /static/{path}
        if prefix.endswith(path):
            prefix = prefix[: -len(path)]
        return f"{prefix}{path}/{{path}}"
    return prefix + path


_ROUTES_BY_ENDPOINT: dict[Any, Any] = {}


def _route_of_endpoint(scope: Scope) -> Any:
    """The route of a matched endpoint the router did not name in ``scope["route"]``
    (FastAPI sets it for its API routes only, not for plain routes like /openapi.json)."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    try:
        return _ROUTES_BY_ENDPOINT[endpoint]
    except (KeyError, TypeError):
        pass
    router = getattr(scope.get("app"), "router", None)
    for candidate in getattr(router, "routes", ()):
        if getattr(candidate, "endpoint", None) is endpoint:
            if len(_ROUTES_BY_ENDPOINT) < 10_000:
                _ROUTES_BY_ENDPOINT[endpoint] = candidate
            return candidate
    return None


def requests_in_flight() -> Iterator[tuple[str, str]]:
    """(method, route template) of every request being served now."""
    for scope, entry_root_path in list(_ACTIVE.values()):
        yield scope.get("method", ""), route_template(scope, entry_root_path)


class MetricsMiddleware:
    """HTTP metrics, ``X-Request-ID`` and the access log, as a pure ASGI middleware."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log: AccessLog | None = AccessLog() if access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.access_log is not None:
                await self.app(scope, receive, self._flush_at_shutdown(send))
            else:
                await self.app(scope, receive, send)
            return

        started = perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = safe_request_id(value)
                break
        if request_id is None:
            request_id = new_request_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id  # request.state.request_id, for the app's own logs
        entry_root_path = scope.get("root_path", "")
        # status, body bytes, end of the last body chunk, started: filled in by send_wrapper
        response: list[Any] = [500, 0, 0.0, False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                response[0] = message["status"]
                response[3] = True
                # ASGI response header names are lowercase; ours replaces the app's own.
                headers = [h for h in message.get("headers") or () if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                response[1] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    response[2] = perf_counter()
            await send(message)

        key = id(response)
        _ACTIVE[key] = (scope, entry_root_path)
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            error = exc
            if not response[3]:
                await _answer_unhandled(scope, receive, send_wrapper, exc)
            raise
        except BaseException as exc:  # a cancelled request: nobody is left to answer
            error = exc
            raise
        finally:
            del _ACTIVE[key]
            duration = (response[2] or perf_counter()) - started
            method = scope["method"]
            route = route_template(scope, entry_root_path)
            HTTP_STATS.observe(method, route, response[0], duration)
            if error is not None:
                record_http_exception(method, route, error)
            access_log = self.access_log
            if access_log is not None and access_log.enabled():
                access_log.add(_access_fields(scope, request_id, method, route, response, duration))


    def _flush_at_shutdown(self, send: Send) -> Send:
        """``send`` of the lifespan, writing the pending access lines once the app has shut
        down: uvicorn re-raises the SIGTERM it caught after that, and the process then
        ends without running exit handlers, so a later flush would never happen."""
        access_log = self.access_log
        assert access_log is not None

        async def send_flushing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                access_log.flush()
            await send(message)

        return send_flushing


async def _answer_unhandled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Send the 500 of an exception the app let through, as Starlette's
    ServerErrorMiddleware would, but through this middleware's ``send``: so the response
    carries the request's X-Request-ID. The exception still propagates, and the outer
    ServerErrorMiddleware, seeing a response started, only logs it.

    An app with its own 500 handler, or in debug mode, answers itself (once, outside):
    its handler can read ``request.state.request_id``.
    """
    app = scope.get("app")
    handlers = getattr(app, "exception_handlers", None) or {}
    if 500 in handlers or Exception in handlers or getattr(app, "debug", False):
        return
    response = ServerErrorMiddleware(app).error_response(Request(scope), exc)
    await response(scope, receive, send)


def _access_fields(
    scope: Scope, request_id: str, method: str, route: str, response: list[Any], duration: float
) -> AccessFields:
    user_agent = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")
            break
    client = scope.get("client")
    state = scope.get("state") or {}
    return (
        time(),
        request_id,
        method,
        route,
        scope.get("path", ""),
        response[0],
        duration,
        state.get("user_id"),
        client[0] if client else None,
        user_agent,
        response[1],
    )
