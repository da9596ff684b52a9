"""The recording API the gateway imports: ``from app.metrics import track_model_inference``.

Helpers are plain functions and context managers, safe on the hot path and never raising
into the caller on bad input. Each records into the process's default
:class:`app.telemetry.Telemetry` (``app.telemetry.default()``) and is also a method of
``Telemetry``, for an app that owns an instance of its own. See ``app.recording`` for what
each records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.recording import DatabaseQuery, HttpRequest, InferenceCall, inference_status
from app.scoring import Permit
from app.telemetry import default

__all__ = [
    "InferenceCall",
    "inference_status",
    "record_api_key_usage",
    "record_cache_hit",
    "record_cache_miss",
    "record_credits_used",
    "record_database_query",
    "record_http_request",
    "record_provider_cost",
    "record_rate_limited",
    "record_routing_decision",
    "record_time_to_first_token",
    "record_tokens_used",
    "record_upstream_call",
    "set_active_api_keys",
    "set_active_connections",
    "set_active_subscriptions",
    "set_cache_size",
    "set_queue_size",
    "set_rate_limit_remaining",
    "set_trial_active",
    "set_user_credit_balance",
    "track_database_query",
    "track_http_request",
    "track_model_inference",
]


def track_model_inference(
    provider: Any, model: Any, *, permit: Permit | None = None, operation: Any = None
) -> InferenceCall:
    """Time an upstream call and record its outcome; an exception in the block is a failure.

    ::

        with track_model_inference("openrouter", "gpt-4o") as call:
            response = await client.post(...)
            call.status_code = response.status_code
            call.usage(usage.prompt_tokens, usage.completion_tokens)

    The call asks the health tracker for its permit as it begins and hands it back with
    its outcome; pass ``permit=`` when the gateway already took one with ``allow()``.
    ``operation`` is the GenAI operation name (``chat`` if None).
    """
    return default().track_model_inference(provider, model, permit=permit, operation=operation)


def record_upstream_call(
    provider: Any,
    model: Any,
    *,
    duration_s: Any,
    status_code: int | None = None,
    error: BaseException | str | None = None,
    ttft_s: Any = None,
    headers: Mapping[str, str] | None = None,
    error_code: str | None = None,
    permit: Permit | None = None,
    input_tokens: Any = None,
    output_tokens: Any = None,
    operation: Any = None,
) -> None:
    """Record one finished upstream call (see :meth:`app.recording.Recorder.record_upstream_call`)."""
    default().record_upstream_call(provider, model, duration_s=duration_s, status_code=status_code, error=error,
                                   ttft_s=ttft_s, headers=headers, error_code=error_code, permit=permit,
                                   input_tokens=input_tokens, output_tokens=output_tokens, operation=operation)


def record_time_to_first_token(provider: Any, model: Any, seconds: Any) -> None:
    default().record_time_to_first_token(provider, model, seconds)


def record_tokens_used(provider: Any, model: Any, input_tokens: Any, output_tokens: Any) -> None:
    """Count the tokens of one call; either count may be None (not reported)."""
    default().record_tokens_used(provider, model, input_tokens, output_tokens)


def record_credits_used(provider: Any, model: Any, user_id: Any, credits: Any, *, api_key: str | None = None) -> None:
    """Count credits; ``user_id`` (and ``api_key``, fingerprinted) feed the top-N lists only."""
    default().record_credits_used(provider, model, user_id, credits, api_key=api_key)


def record_provider_cost(provider: Any, cost_usd: Any) -> None:
    default().record_provider_cost(provider, cost_usd)


def record_api_key_usage(api_key: Any, status: Any = "success") -> None:
    """Count one use of an API key by outcome; the key only feeds the top-N, fingerprinted."""
    default().record_api_key_usage(api_key, status)


def record_routing_decision(outcome: Any) -> None:
    """Count a routing decision: ``primary``, ``failover`` or ``panic``."""
    default().record_routing_decision(outcome)


def track_http_request(method: Any, endpoint: Any) -> HttpRequest:
    """Time a request served outside the middleware; ``endpoint`` must be a route template."""
    return default().track_http_request(method, endpoint)


def record_http_request(
    method: Any, endpoint: Any, status_code: Any, duration_s: Any, exc: BaseException | None = None
) -> None:
    """Record one served HTTP request; ``endpoint`` must be a route template."""
    default().record_http_request(method, endpoint, status_code, duration_s, exc)


def track_database_query(table: Any, operation: Any) -> DatabaseQuery:
    """Time a database query: ``with track_database_query("users", "select"): ...``."""
    return default().track_database_query(table, operation)


def record_database_query(table: Any, operation: Any, duration_s: Any) -> None:
    default().record_database_query(table, operation, duration_s)


def record_cache_hit(cache_name: Any) -> None:
    default().record_cache_hit(cache_name)


def record_cache_miss(cache_name: Any) -> None:
    default().record_cache_miss(cache_name)


def record_rate_limited(limit_type: Any) -> None:
    """Count a request refused by one of the gateway's own rate limits."""
    default().record_rate_limited(limit_type)


def set_active_connections(connection_type: Any, count: Any) -> None:
    default().set_active_connections(connection_type, count)


def set_queue_size(queue_name: Any, size: Any) -> None:
    default().set_queue_size(queue_name, size)


def set_cache_size(cache_name: Any, size_bytes: Any) -> None:
    default().set_cache_size(cache_name, size_bytes)


def set_rate_limit_remaining(limit_type: Any, remaining: Any) -> None:
    default().set_rate_limit_remaining(limit_type, remaining)


def set_active_api_keys(status: Any, count: Any) -> None:
    default().set_active_api_keys(status, count)


def set_user_credit_balance(plan_type: Any, balance: Any) -> None:
    default().set_user_credit_balance(plan_type, balance)


def set_trial_active(status: Any, count: Any) -> None:
    default().set_trial_active(status, count)


def set_active_subscriptions(plan: Any, billing_cycle: Any, count: Any) -> None:
    default().set_active_subscriptions(plan, billing_cycle, count)
