"""The metric catalogue: every family gateway-metrics exposes, declared once, as data.

Exposition, the recording helpers, the summaries, the docs and the dashboards read this
module; tests keep them in step with it. Adding a metric is one entry in ``FAMILIES``.

Names follow the seed documents so existing PromQL keeps working. Counter names carry
their ``_total`` suffix here exactly as they are exposed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Category(StrEnum):
    SYSTEM = "system"
    PROVIDERS = "providers"
    MODELS = "models"
    BUSINESS = "business"
    PERFORMANCE = "performance"


#: The value a capped label records under once its family has seen ``label_cap`` values.
OVERFLOW_VALUE = "other"
#: The value of a label whose caller passed nothing usable (None, empty, an object).
UNKNOWN_VALUE = "unknown"

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

#: ``status`` of ``model_inference_requests_total``: success or an error category of the
#: OpenAI-style error taxonomy, plus the two a gateway sees without an upstream answer.
INFERENCE_STATUSES = (
    "success",
    "invalid_request_error",
    "authentication_error",
    "rate_limit_error",
    "server_error",
    "not_found_error",
    "service_unavailable",
    "timeout",
    "unknown",
)
TOKEN_TYPES = ("input", "output")
ROUTING_OUTCOMES = ("primary", "failover", "panic")
CIRCUIT_STATES = ("closed", "open", "half_open")
APDEX_ZONES = ("satisfied", "tolerating", "frustrated")
#: Where provider outcomes are shared: the host's workers, the other replicas.
SHARING_CHANNELS = ("host", "redis")
#: Exposed value of ``gatewayz_provider_circuit_state``: the index into CIRCUIT_STATES.
CIRCUIT_STATE_VALUES = {state: float(index) for index, state in enumerate(CIRCUIT_STATES)}


@dataclass(frozen=True, slots=True)
class Label:
    """One label of a family.

    ``values`` set: an enum; anything else records as ``fallback``.
    ``values`` None: free text from callers, capped per family (``"other"`` past the cap).
    """

    name: str
    values: frozenset[str] | None = None
    fallback: str = UNKNOWN_VALUE

    @property
    def capped(self) -> bool:
        return self.values is None


def enum(name: str, values: Iterable[str], fallback: str = UNKNOWN_VALUE) -> Label:
    return Label(name, frozenset(values), fallback)


def free(name: str) -> Label:
    return Label(name)


# Histogram buckets. LLM calls are slow and long-tailed: a completion can take a minute,
# so the inference buckets reach 300 s, the HTTP ones 60 s (streamed responses).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
# Time to first token: interactive use feels instant under ~0.3 s and broken past ~5 s.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Time per output token: streaming runs at 20-200 tokens/s (5-50 ms a token) on today's
# providers, 1-5 ms on the fastest (Cerebras, Groq); 0.25 s a token is a visible crawl and
# past 1 s a token the stream is broken, whatever the model.
TPOT_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)

Kind = Literal["counter", "gauge", "histogram"]
Source = Literal["recorded", "collected", "derived"]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[Label, ...]
    categories: frozenset[Category]
    buckets: tuple[float, ...] = ()
    #: Where its values come from: "recorded" by the helpers into a prometheus_client
    #: metric; "collected" at scrape time from the app's own state (app.collectors,
    #: app.http_stats), which each of several workers publishes into its files; "derived"
    #: at scrape time from other families, by whatever reads them (with several workers,
    #: from their summed files).
    source: Source = "recorded"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def sample_names(self) -> tuple[str, ...]:
        """Names of the series this family exposes in the text format."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


_S, _PR, _M, _B, _PE = (
    Category.SYSTEM,
    Category.PROVIDERS,
    Category.MODELS,
    Category.BUSINESS,
    Category.PERFORMANCE,
)


def _family(
    name: str,
    kind: Kind,
    help: str,
    labels: Iterable[Label],
    categories: Iterable[Category],
    buckets: tuple[float, ...] = (),
    source: Source = "recorded",
) -> Family:
    return Family(name, kind, help, tuple(labels), frozenset(categories), buckets, source)


_method = enum("method", HTTP_METHODS, fallback="OTHER")
_endpoint = free("endpoint")
_provider = free("provider")
_model = free("model")

FAMILIES: tuple[Family, ...] = (
    # system
    # The two per-request HTTP families are aggregated lock-free by app.http_stats.
    _family("http_requests_total", "counter", "HTTP requests by method, route template and status code.",
            [_method, _endpoint, free("status_code")], [_S], source="collected"),
    _family("http_request_duration_seconds", "histogram",
            "HTTP request duration in seconds, to the last byte of the response.",
            [_method, _endpoint], [_S, _PE], HTTP_BUCKETS, source="collected"),
    _family("http_requests_in_flight", "gauge", "HTTP requests being served now.",
            [_method, _endpoint], [_S], source="collected"),
    _family("http_exceptions_total", "counter", "Exceptions raised while serving HTTP requests.",
            [_method, _endpoint, free("exception_type")], [_S]),
    _family("active_connections", "gauge", "Open connections by kind (db, redis, provider).",
            [free("type")], [_S]),
    _family("queue_size", "gauge", "Items waiting in a queue.", [free("queue_name")], [_S]),
    _family("gatewayz_label_overflow_total", "counter",
            "Samples recorded under label value \"other\" because the family reached its label cap.",
            [free("metric"), free("label")], [_S]),
    _family("gatewayz_recording_rejected_total", "counter",
            "Values the recording helpers dropped as unusable (None, wrong type, negative).",
            [free("helper"), free("reason")], [_S]),
    # providers
    _family("provider_availability", "gauge",
            "Share of recent calls and probes that reached the provider (0 while its circuit is open).",
            [_provider], [_PR], source="collected"),
    _family("provider_error_rate", "gauge", "Share of recent calls that failed (5xx, timeout, connection).",
            [_provider], [_PR], source="collected"),
    _family("provider_response_time_seconds", "histogram", "Upstream provider response time in seconds.",
            [_provider], [_PR], INFERENCE_BUCKETS),
    _family("gatewayz_provider_health_score", "gauge",
            "Composite provider health: 0.4 availability + 0.3 (1 - error rate) + 0.3 Apdex.",
            [_provider], [_PR], source="collected"),
    _family("gatewayz_provider_circuit_state", "gauge",
            "Provider circuit breaker state: 0 closed, 1 open, 2 half-open.",
            [_provider], [_PR], source="collected"),
    _family("gatewayz_cost_by_provider", "gauge",
            "Cumulative upstream cost in USD by provider (only grows; use increase()).",
            [_provider], [_PR, _B]),
    _family("gatewayz_routing_decisions_total", "counter",
            "Routing decisions: primary choice, failover to another provider, or panic.",
            [enum("outcome", ROUTING_OUTCOMES)], [_PR]),
    _family("gatewayz_provider_circuit_transitions_total", "counter",
            "Circuit breaker moves by provider and the state entered.",
            [_provider, enum("to_state", CIRCUIT_STATES)], [_PR]),
    _family("gatewayz_provider_apdex_total", "counter",
            "Scored upstream calls by Apdex zone (failures are frustrated): fleet-wide latency score.",
            [_provider, enum("zone", APDEX_ZONES)], [_PR]),
    _family("gatewayz_health_sharing_errors_total", "counter",
            "Rounds in which sharing provider outcomes with the other processes (host: the "
            "workers' files; redis: the other replicas) failed; each process then decides alone.",
            [enum("channel", SHARING_CHANNELS)], [_PR]),
    # models
    _family("model_inference_requests_total", "counter", "Upstream inference calls by outcome.",
            [_provider, _model, enum("status", INFERENCE_STATUSES)], [_M]),
    _family("model_inference_duration_seconds", "histogram", "Upstream inference duration in seconds.",
            [_provider, _model], [_M, _PE], INFERENCE_BUCKETS),
    _family("tokens_used_total", "counter", "Tokens consumed, input and output.",
            [_provider, _model, enum("token_type", TOKEN_TYPES)], [_M]),
    _family("gatewayz_time_to_first_token_seconds", "histogram",
            "Time from the upstream request to the first streamed token, in seconds.",
            [_provider, _model], [_M, _PE], TTFT_BUCKETS),
    _family("gatewayz_time_per_output_token_seconds", "histogram",
            "Time per output token after the first of a successful streamed call, in seconds: "
            "(duration - time to first token) / (output tokens - 1).",
            [_provider, _model], [_M, _PE], TPOT_BUCKETS),
    _family("gatewayz_token_efficiency", "gauge", "Output tokens per input token since start.",
            [_provider, _model], [_M], source="derived"),
    # business
    _family("credits_used_total", "counter", "Credits consumed.", [_provider, _model], [_B]),
    _family("api_key_usage_total", "counter", "API key uses by outcome.", [free("status")], [_B]),
    _family("active_api_keys", "gauge", "API keys by status.", [free("status")], [_B]),
    _family("user_credit_balance", "gauge", "Sum of user credit balances by plan type.",
            [free("plan_type")], [_B]),
    _family("trial_active", "gauge", "Trials by status.", [free("status")], [_B]),
    _family("active_subscriptions", "gauge", "Active subscriptions by plan and billing cycle.",
            [free("plan"), free("billing_cycle")], [_B]),
    # performance
    _family("database_queries_total", "counter", "Database queries by table and operation.",
            [free("table"), free("operation")], [_PE]),
    _family("database_query_duration_seconds", "histogram", "Database query duration in seconds.",
            [free("table")], [_PE], DB_BUCKETS),
    _family("cache_hits_total", "counter", "Cache hits.", [free("cache_name")], [_PE]),
    _family("cache_misses_total", "counter", "Cache misses.", [free("cache_name")], [_PE]),
    _family("cache_size_bytes", "gauge", "Cache size in bytes.", [free("cache_name")], [_PE]),
    _family("rate_limited_requests_total", "counter", "Requests refused by a rate limit.",
            [free("limit_type")], [_PE]),
    _family("current_rate_limit", "gauge", "Requests left in the current rate-limit window.",
            [free("limit_type")], [_PE]),
)

FAMILIES_BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}

# --- OpenTelemetry GenAI semantic conventions (GATEWAY_METRICS_GENAI_SEMCONV) ------------
#
# The instruments of the GenAI semantic conventions (OpenTelemetry semantic conventions
# 1.41, status development; docs/EMBEDDING.md says which and why), under the names and
# labels the OpenTelemetry Python SDK's Prometheus exporter gives them: dots become ``_``,
# a ``{token}`` unit is dropped and ``s`` becomes ``_seconds`` (tests/test_genai.py runs the
# SDK beside them). Registered only when the setting is on, so they are not in FAMILIES.

#: ``gen_ai.token.type``.
GENAI_TOKEN_TYPES = ("input", "output")
#: ``error.type`` of a failed call: its inference status (our outcome taxonomy), ``_OTHER``
#: (the spec's fallback) for an error of no known class; ``""`` on a success, as the SDK's
#: exporter fills an attribute absent on some points of a family.
GENAI_ERROR_TYPES = ("", *(status for status in INFERENCE_STATUSES if status not in ("success", "unknown")), "_OTHER")
#: The spec's recommended ExplicitBucketBoundaries of each instrument.
GENAI_TOKEN_BUCKETS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
                       4194304.0, 16777216.0, 67108864.0)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

_operation = free("gen_ai_operation_name")
_genai_provider = free("gen_ai_provider_name")
_request_model = free("gen_ai_request_model")

GENAI_FAMILIES: tuple[Family, ...] = (
    _family("gen_ai_client_token_usage", "histogram", "Number of input and output tokens used.",
            [_operation, _genai_provider, _request_model, enum("gen_ai_token_type", GENAI_TOKEN_TYPES)],
            [_M], GENAI_TOKEN_BUCKETS),
    _family("gen_ai_client_operation_duration_seconds", "histogram", "GenAI operation duration.",
            [enum("error_type", GENAI_ERROR_TYPES, fallback="_OTHER"), _operation, _genai_provider, _request_model],
            [_M], GENAI_DURATION_BUCKETS),
    _family("gen_ai_server_time_to_first_token_seconds", "histogram",
            "Time to generate first token for successful responses.",
            [_operation, _genai_provider, _request_model], [_M], GENAI_TTFT_BUCKETS),
    _family("gen_ai_server_time_per_output_token_seconds", "histogram",
            "Time per output token generated after the first token for successful responses.",
            [_operation, _genai_provider, _request_model], [_M], GENAI_TPOT_BUCKETS),
)

#: The multiprocess modes prometheus_client's Gauge accepts.
MultiprocessMode = Literal[
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"
]

#: How each gauge's values from several worker processes combine into one
#: (prometheus_client multiprocess modes; docs/WORKERS.md explains each choice). "live" modes
#: drop a worker's value when it dies; the others keep its last value.
MULTIPROCESS_MODES: dict[str, MultiprocessMode] = {
    # Each worker serves its own requests and holds its own connections: the fleet's
    # figure is the sum over the workers alive now.
    "http_requests_in_flight": "livesum",
    "active_connections": "livesum",
    # Published by each worker from its own health tracker: the most pessimistic live
    # view, so a provider one worker sees failing is not hidden by another's luck.
    "provider_availability": "livemin",
    "gatewayz_provider_health_score": "livemin",
    "provider_error_rate": "livemax",
    "gatewayz_provider_circuit_state": "livemax",
    # Only grows by inc(): every worker's share, dead ones' included, or it would drop.
    "gatewayz_cost_by_provider": "sum",
    # Figures of shared state (database, shared queues and caches, rate-limit windows)
    # that any worker may read and set: the value set last is the newest.
    "queue_size": "mostrecent",
    "active_api_keys": "mostrecent",
    "user_credit_balance": "mostrecent",
    "trial_active": "mostrecent",
    "active_subscriptions": "mostrecent",
    "cache_size_bytes": "mostrecent",
    "current_rate_limit": "mostrecent",
}

