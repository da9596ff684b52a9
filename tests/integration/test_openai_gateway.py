"""examples/openai_gateway.py, driven by the official ``openai`` package, over fake
OpenAI-compatible upstreams on loopback: one healthy, one answering 503, one answering 429
with Retry-After. Every answer arrives, the failing upstreams are failed over and then
avoided, and /metrics holds what the upstreams sent."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.settings import Settings
from app.telemetry import Telemetry
from tests.support.servers import AppServer, serve_app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from openai_gateway import CREDITS_PER_1K_TOKENS, build_app  # noqa: E402

MODEL = "gpt-test"
PROMPT_TOKENS = 11
#: A non-streamed answer's completion tokens.
COMPLETION_TOKENS = 7
#: A streamed answer: its content chunks, one token each, after a first-token delay and
#: with a delay between tokens; the usage chunk follows the last token at once.
STREAM_TOKENS = 6
TTFT_DELAY_S = 0.15
TOKEN_DELAY_S = 0.03
#: What a loopback hop, the event loops and a busy CI machine may add to a measured delay.
SLACK_S = 0.5


def chunk(index: int, delta: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}] if index >= 0 else [],
            "usage": usage}
    return f"data: {json.dumps(body)}\n\n".encode()


def fake_upstream(kind: str, hits: Counter[str]) -> Starlette:
    """An OpenAI-compatible upstream: ``healthy``, ``down`` (503) or ``limited`` (429)."""

    async def chat(request: Request) -> Response:
        hits[kind] += 1
        body = await request.json()
        if kind == "down":
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "code": None}}, 503)
        if kind == "limited":
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}, 429,
                                headers={"Retry-After": "60"})
        if not body.get("stream"):
            return JSONResponse({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                          "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
            })
        assert body.get("stream_options", {}).get("include_usage") is True  # the gateway asks for it

        async def events() -> AsyncIterator[bytes]:
            yield chunk(0, {"role": "assistant", "content": ""})  # a role chunk is not a token
            await asyncio.sleep(TTFT_DELAY_S)
            for token in range(STREAM_TOKENS):
                if token:
                    await asyncio.sleep(TOKEN_DELAY_S)
                yield chunk(0, {"content": f"t{token} "})
            yield chunk(-1, {}, {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": STREAM_TOKENS,
                                 "total_tokens": PROMPT_TOKENS + STREAM_TOKENS})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def hits() -> Counter[str]:
    return Counter()


@pytest.fixture
def gateway(hits: Counter[str]) -> Iterator[AppServer]:
    upstreams = {kind: serve_app(fake_upstream(kind, hits)) for kind in ("down", "limited", "healthy")}
    try:
        settings = Settings(access_log=False, genai_semconv=True)
        app = build_app({kind: f"{server.url}/v1" for kind, server in upstreams.items()},
                        settings=settings, telemetry=Telemetry(settings))
        with serve_app(app) as server:
            yield server
    finally:
        for server in upstreams.values():
            server.stop()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_openai_sdk_through_the_gateway_fails_over_avoids_and_measures(gateway: AppServer,
                                                                       hits: Counter[str]) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-test-gateway", max_retries=0, timeout=30)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    plain_answers, streamed = 0, 0
    # No call waits out the throttled upstream's Retry-After (60 s): the client's 30 s
    # timeout would raise; how fast the six calls are is no claim of this test.
    for index in range(6):
        if index % 2 == 0:
            answer = client.chat.completions.create(model=MODEL, messages=messages)
            assert answer.choices[0].message.content == "hello"
            assert answer.usage is not None and answer.usage.completion_tokens == COMPLETION_TOKENS
            plain_answers += 1
        else:
            stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                    stream_options={"include_usage": True})
            parts, usage = [], None
            for event in stream:
                parts.extend(choice.delta.content or "" for choice in event.choices)
                usage = event.usage or usage
            assert "".join(parts) == "".join(f"t{token} " for token in range(STREAM_TOKENS))
            assert usage is not None and usage.completion_tokens == STREAM_TOKENS
            streamed += 1

    # The first request found both failing upstreams and failed over to the healthy one; the
    # 503 upstream then ranked last and the throttled one was out until its Retry-After.
    assert hits == {"down": 1, "limited": 1, "healthy": 6}

    samples = scrape(gateway.url)
    calls = plain_answers + streamed
    assert value(samples, "model_inference_requests_total", provider="down", model=MODEL,
                 status="service_unavailable") == 1
    assert value(samples, "model_inference_requests_total", provider="limited", model=MODEL,
                 status="rate_limit_error") == 1
    assert value(samples, "model_inference_requests_total", provider="healthy", model=MODEL, status="success") == calls
    assert value(samples, "gatewayz_routing_decisions_total", outcome="primary") == calls
    assert value(samples, "gatewayz_routing_decisions_total", outcome="failover") == 2

    input_tokens = calls * PROMPT_TOKENS
    output_tokens = plain_answers * COMPLETION_TOKENS + streamed * STREAM_TOKENS
    assert value(samples, "tokens_used_total", provider="healthy", model=MODEL, token_type="input") == input_tokens
    assert value(samples, "tokens_used_total", provider="healthy", model=MODEL, token_type="output") == output_tokens
    assert value(samples, "credits_used_total", provider="healthy", model=MODEL) == pytest.approx(
        (input_tokens + output_tokens) / 1000 * CREDITS_PER_1K_TOKENS)
    assert value(samples, "api_key_usage_total", status="attempt") == calls
    assert value(samples, "api_key_usage_total", status="success") == calls

    # Time to first token: the fake's delay before its first content chunk, per streamed call.
    ttft_count = value(samples, "gatewayz_time_to_first_token_seconds_count", provider="healthy", model=MODEL)
    ttft_sum = value(samples, "gatewayz_time_to_first_token_seconds_sum", provider="healthy", model=MODEL)
    assert ttft_count == streamed
    assert TTFT_DELAY_S * streamed <= ttft_sum <= (TTFT_DELAY_S + SLACK_S) * streamed
    # Time per output token: the fake's delay between tokens.
    tpot_count = value(samples, "gatewayz_time_per_output_token_seconds_count", provider="healthy", model=MODEL)
    tpot_sum = value(samples, "gatewayz_time_per_output_token_seconds_sum", provider="healthy", model=MODEL)
    assert tpot_count == streamed
    assert TOKEN_DELAY_S * streamed <= tpot_sum <= (TOKEN_DELAY_S + SLACK_S) * streamed

    # The same calls in the OpenTelemetry GenAI names (GATEWAY_METRICS_GENAI_SEMCONV=true).
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "healthy", "gen_ai_request_model": MODEL}
    assert value(samples, "gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="output") == output_tokens
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count", **genai) == streamed
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **{
        **genai, "gen_ai_provider_name": "down", "error_type": "service_unavailable"}) == 1
