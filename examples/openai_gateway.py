"""A small OpenAI-compatible gateway over several upstreams, instrumented with gateway-metrics.

``POST /v1/chat/completions`` (streamed and not) goes to the healthiest upstream and fails
over to the next on a 429, a 5xx or a connection error. It does what docs/EMBEDDING.md asks of a
gateway: the middleware and the routers (``create_app``), ``tracker.choose`` for the order
and ``tracker.allow`` for each attempt's permit, ``track_model_inference`` around each
upstream call with the stream's first token and the usage of its last chunk
(``stream_options.include_usage``), credits and API key usage::

    .venv/bin/python examples/openai_gateway.py \\
        --upstream openai=https://api.openai.com/v1 --upstream groq=https://api.groq.com/openai/v1
    # or GATEWAY_UPSTREAMS="openai=https://...,groq=https://..." .venv/bin/python examples/openai_gateway.py

Then point any OpenAI client at ``http://127.0.0.1:8080/v1``; ``/metrics``, the summaries and
``/prometheus/metrics/health`` are served beside it. Each upstream's key comes from
``GATEWAY_UPSTREAM_KEY_<NAME>`` (upper case), if set. ``tests/integration/test_openai_gateway.py``
runs it against fake upstreams with the ``openai`` package as the client.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.main import create_app
from app.recording import InferenceCall
from app.settings import Settings
from app.telemetry import Telemetry, default

#: Credits charged per 1,000 tokens, input and output alike (a gateway reads its price list).
CREDITS_PER_1K_TOKENS = 0.2
#: Statuses after which the next upstream is tried: throttled, overloaded or down.
FAILOVER_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def parse_upstreams(specs: list[str]) -> dict[str, str]:
    """``name=url`` pairs (each may hold several, separated by commas) as {name: base URL}."""
    upstreams: dict[str, str] = {}
    for spec in specs:
        for pair in filter(None, (item.strip() for item in spec.split(","))):
            name, sep, url = pair.partition("=")
            if not sep or not name.strip() or not url.strip():
                raise ValueError(f"expected name=url, got {pair!r}")
            upstreams[name.strip()] = url.strip().rstrip("/")
    if len(upstreams) < 1:
        raise ValueError("give at least one upstream")
    return upstreams


def openai_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status_code=status)


def build_app(
    upstreams: Mapping[str, str],
    *,
    settings: Settings | None = None,
    telemetry: Telemetry | None = None,
    keys: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> FastAPI:
    """The gateway: the gateway-metrics service (middleware, routers) plus the proxy route."""
    settings = settings or Settings()
    telemetry = telemetry or default(settings)
    app = create_app(settings, telemetry)  # MetricsMiddleware, /metrics, summaries, health
    tracker = telemetry.tracker
    client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))
    upstream_keys = dict(keys or {})

    @app.post("/v1/chat/completions", tags=["gateway"])
    async def chat_completions(request: Request) -> Response:
        api_key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        telemetry.record_api_key_usage(api_key, "attempt")  # fingerprinted, never a label
        try:
            body = await request.json()
            model = body["model"]
        except (ValueError, KeyError, TypeError):
            telemetry.record_api_key_usage(api_key, "error")
            return openai_error(400, "a JSON body with a model is required", "invalid_request_error")
        stream = body.get("stream") is True
        if stream:  # the usage arrives in the stream's last chunk
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        user = request.headers.get("x-user-id") or body.get("user") or "anonymous"

        choice = tracker.choose(list(upstreams))  # healthiest first; open circuits and throttled last or out
        last = openai_error(503, "no upstream could answer", "service_unavailable")
        for attempt, provider in enumerate(choice.order):
            permit = tracker.allow(provider)  # a half-open circuit lets only its trials through
            if not permit:
                continue
            telemetry.record_routing_decision("panic" if choice.panic else "primary" if attempt == 0 else "failover")
            stack = AsyncExitStack()
            call = await stack.enter_async_context(
                telemetry.track_model_inference(provider, model, permit=permit))
            try:
                upstream = await stack.enter_async_context(client.stream(
                    "POST", f"{upstreams[provider]}/chat/completions", json=body,
                    headers=_upstream_headers(upstream_keys.get(provider))))
                call.status_code = upstream.status_code
                call.headers = upstream.headers  # Retry-After and rate-limit hints feed the tracker
                if upstream.status_code >= 400:
                    content = await upstream.aread()
                    call.error_code = _error_code(content)  # insufficient_quota keeps it out longer
                    last = Response(content, status_code=upstream.status_code,
                                    media_type=upstream.headers.get("content-type"))
                    await stack.aclose()  # records the failure with its permit
                    if upstream.status_code in FAILOVER_STATUSES:
                        continue
                    break  # the caller's fault: another upstream would refuse it too
            except httpx.TransportError as exc:
                call.fail(error=exc)  # a connect error or a timeout: unreached
                await stack.aclose()
                continue
            except BaseException as exc:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            if stream:
                return StreamingResponse(_relay(stack, call, upstream, telemetry, provider, model, user, api_key),
                                         media_type="text/event-stream")
            async with stack:
                answer = json.loads(await upstream.aread())
                usage = answer.get("usage") or {}
                call.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
            _charge(telemetry, provider, model, user, api_key, usage)
            return JSONResponse(answer)
        telemetry.record_api_key_usage(api_key, "error")
        return last

    service_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(app):
            yield
        await client.aclose()

    app.router.lifespan_context = lifespan
    return app


async def _relay(stack: AsyncExitStack, call: InferenceCall, upstream: httpx.Response, telemetry: Telemetry,
                 provider: str, model: str, user: str, api_key: str) -> AsyncIterator[bytes]:
    """Pass the upstream's server-sent events through, marking the first token and taking
    the usage of the last chunk; the call is recorded when the stream ends (or breaks)."""
    usage: dict[str, Any] = {}
    async with stack:
        async for line in upstream.aiter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data and data != "[DONE]":
                    chunk = json.loads(data)
                    if call.ttft_s is None and any((c.get("delta") or {}).get("content")
                                                   for c in chunk.get("choices") or ()):
                        call.first_token()
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                        call.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
            yield (line + "\n").encode()
    _charge(telemetry, provider, model, user, api_key, usage)


def _charge(telemetry: Telemetry, provider: str, model: str, user: str, api_key: str,
            usage: Mapping[str, Any]) -> None:
    tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    telemetry.record_credits_used(provider, model, user, tokens / 1000 * CREDITS_PER_1K_TOKENS, api_key=api_key)
    telemetry.record_api_key_usage(api_key, "success")


def _upstream_headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def _error_code(content: bytes) -> str | None:
    try:
        code = json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", action="append", default=[],
                        help="name=base URL of an OpenAI-compatible API (repeat it; default: $GATEWAY_UPSTREAMS)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    upstreams = parse_upstreams(args.upstream or [os.environ.get("GATEWAY_UPSTREAMS", "")])
    keys = {name: os.environ[f"GATEWAY_UPSTREAM_KEY_{name.upper()}"] for name in upstreams
            if f"GATEWAY_UPSTREAM_KEY_{name.upper()}" in os.environ}
    import uvicorn

    uvicorn.run(build_app(upstreams, keys=keys), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
