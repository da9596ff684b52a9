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

It records into the ``Telemetry`` it is given, else the one of the app it serves
(``app.state.telemetry``, which ``create_app`` sets), else the process's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessFields, AccessLog
from app.request_id import HEADER as REQUEST_ID_HEADER
from app.request_id import new_request_id, safe_request_id

if TYPE_CHECKING:
    from app.telemetry import Telemetry

UNMATCHED = "unmatched"
#: Routes remembered by their endpoint: as many as an app has routes, at most.
MAX_ROUTES = 10_000


class InFlight:
    """The requests one app is serving now, for ``http_requests_in_flight`` (computed at
    scrape time, so a request pays one dict insert and one delete)."""

    __slots__ = ("active", "routes_by_endpoint")

    def __init__(self) -> None:
        #: By an id of their own: (scope, root path on entry).
        self.active: dict[int, tuple[Scope, str]] = {}
        #: The routes of endpoints the router did not name in the scope (see route_template).
        self.routes_by_endpoint: dict[Any, Any] = {}

    def requests(self) -> Iterator[tuple[str, str]]:
        """(method, route template) of every request being served now."""
        for scope, entry_root_path in list(self.active.values()):
            yield scope.get("method", ""), route_template(scope, entry_root_path, self.routes_by_endpoint)


def route_template(scope: Scope, entry_root_path: str = "", routes_by_endpoint: dict[Any, Any] | None = None) -> str:
    """The template of the route that served ``scope`` (``/v1/keys/{key_id}``);
    ``routes_by_endpoint`` remembers the routes found by a walk of the router."""
    route = scope.get("route")
    if route is None:
        route = _route_of_endpoint(scope, {} if routes_by_endpoint is None else routes_by_endpoint)
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


def _route_of_endpoint(scope: Scope, routes_by_endpoint: dict[Any, Any]) -> Any:
    """The route of a matched endpoint the router did not name in ``scope["route"]``
    (FastAPI sets it for its API routes only, not for plain routes like /openapi.json)."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    try:
        return routes_by_endpoint[endpoint]
    except (KeyError, TypeError):
        pass
    router = getattr(scope.get("app"), "router", None)
    for candidate in getattr(router, "routes", ()):
        if getattr(candidate, "endpoint", None) is endpoint:
            if len(routes_by_endpoint) < MAX_ROUTES:
                routes_by_endpoint[endpoint] = candidate
            return candidate
    return None


class MetricsMiddleware:
    """HTTP metrics, ``X-Request-ID`` and the access log, as a pure ASGI middleware."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True, telemetry: Telemetry | None = None) -> None:
        self.app = app
        self.access_log: AccessLog | None = AccessLog() if access_log else None
        self.telemetry = telemetry

    def _telemetry_of(self, scope: Scope) -> Telemetry:
        """The telemetry to record into: the app's, kept (this middleware serves one app),
        else the process's default, asked for each time as the scrape routes do."""
        state = getattr(scope.get("app"), "state", None)
        telemetry: Telemetry | None = getattr(state, "telemetry", None)
        if telemetry is not None:
            self.telemetry = telemetry
            return telemetry
        from app.telemetry import default

        return default()

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

        telemetry = self.telemetry
        if telemetry is None:
            telemetry = self._telemetry_of(scope)
        in_flight = telemetry.in_flight
        key = id(response)
        in_flight.active[key] = (scope, entry_root_path)
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
            del in_flight.active[key]
            duration = (response[2] or perf_counter()) - started
            method = scope["method"]
            route = route_template(scope, entry_root_path, in_flight.routes_by_endpoint)
            telemetry.http_stats.observe(method, route, response[0], duration)
            if error is not None:
                telemetry.record_http_exception(method, route, error)
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
    app: ASGIApp | None = scope.get("app")
    handlers = getattr(app, "exception_handlers", None) or {}
    if 500 in handlers or Exception in handlers or getattr(app, "debug", False):
        return
    # error_response() never calls the wrapped app, and a bare ASGI stack has none in its scope.
    wrapped = app if app is not None else _no_app
    response = ServerErrorMiddleware(wrapped).error_response(Request(scope), exc)
    await response(scope, receive, send)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The wrapped app of a ServerErrorMiddleware built only for its ``error_response()``."""
    raise RuntimeError("never called")


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
