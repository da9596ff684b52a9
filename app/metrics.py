"""The recording API the gateway imports: ``from app.metrics import track_model_inference``.

Helpers are plain functions and context managers, safe on the hot path and never raising
into the caller on bad input. See ``app.recording`` for what each records.
"""

from app.recording import (
    InferenceCall,
    inference_status,
    record_api_key_usage,
    record_cache_hit,
    record_cache_miss,
    record_credits_used,
    record_database_query,
    record_http_request,
    record_provider_cost,
    record_rate_limited,
    record_routing_decision,
    record_time_to_first_token,
    record_tokens_used,
    record_upstream_call,
    set_active_api_keys,
    set_active_connections,
    set_active_subscriptions,
    set_cache_size,
    set_queue_size,
    set_rate_limit_remaining,
    set_trial_active,
    set_user_credit_balance,
    track_database_query,
    track_http_request,
    track_model_inference,
)
from app.registry import METRICS

__all__ = [
    "METRICS",
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
