"""The summary JSON of SPEC section 4, as pydantic models (the OpenAPI contract).

One shape whatever the source. Figures a window does not define (a rate with no
traffic, a percentile with no observations) are ``null``, never a made-up zero.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Ms = float | None
#: Where a summary's figures come from.
SummarySource = Literal["prometheus", "local"]

#: One meaning of "error rate" everywhere (app.scoring.outcome): the health score's, /health's
#: and provider_error_rate's.
ERROR_RATE = ("Failed and unreached calls (5xx, timeouts, connection errors) over the calls the health "
              "score counts (all but throttled, 401/403/404 and cancelled ones), in the window.")
THROTTLED_SHARE = "Share of all calls in the window that were throttled (429, overloaded, quota spent)."
#: How a model's streaming pace is measured, in the local and the Prometheus source alike.
TPOT = ("Time per output token of the window's successful streamed calls with two output tokens or more: "
        "(duration - time to first token) / (output tokens - 1), gatewayz_time_per_output_token_seconds.")
OUTPUT_TOKENS_PER_SECOND = (
    "The pace of a streamed answer after its first token, in output tokens per second: 1 / the mean time per "
    "output token of the window's streamed calls (each call counts once: the histogram's _count over its _sum). "
    "Not the model's token throughput (see tokens_output); null without streamed calls in the window.")
CLIENT_ERROR_SHARE = "Share of all calls in the window that were the caller's fault (4xx but 429)."


class BackendReadiness(BaseModel):
    """The Prometheus backend's state, as /ready reports it."""

    configured: bool
    reachable: bool | None = None
    latency_ms: float | None = None
    error: str | None = None


class SharingChannel(BaseModel):
    """One way this process shares its providers' outcomes: ``host`` (the workers of this
    host, through the multiprocess directory) or ``redis`` (the other replicas)."""

    name: str
    ok: bool = Field(description="Its last round went through (else this process decides alone meanwhile)")
    last_error: str | None = None
    last_error_at: datetime | None = None
    errors: int = Field(description="Rounds that failed")
    sent: int = Field(description="Outcomes published")
    received: int = Field(description="Outcomes received from the other processes and replayed")
    garbage: int = Field(description="Records that could not be read and were skipped")
    dropped: int = Field(description="Outcomes given up after failing to send for too long")


class SummaryError(BaseModel):
    """What went wrong with the backend for this answer."""

    kind: str = Field(description="unreachable, timeout, http_error, bad_data, execution, "
                                  "backend_timeout, garbage, partial; fallback: figures from "
                                  "this instance's registry")
    message: str
    query: str | None = Field(None, description="The named query concerned, if one.")
    status: int | None = Field(None, description="The HTTP status it maps to, if one.")


class ProviderSummary(BaseModel):
    provider: str
    health_score: float | None
    state: str = Field(description="unknown, healthy, degraded or unavailable")
    circuit: str | None = Field(None, description="closed, open or half_open (local tracker)")
    availability: float | None = None
    error_rate: float | None = Field(None, description=ERROR_RATE)
    throttled_share: float | None = Field(None, description=THROTTLED_SHARE)
    client_error_share: float | None = Field(None, description=CLIENT_ERROR_SHARE)
    requests_per_second: float | None = None
    avg_response_time_ms: Ms = None
    p95_response_time_ms: Ms = None
    cost_usd: float | None = Field(None, description="Cumulative upstream cost.")


class ProvidersSummary(BaseModel):
    total_providers: int
    healthy_providers: int
    degraded_providers: int
    unavailable_providers: int
    unknown_providers: int = Field(0, description="Providers with no calls in the window yet.")
    avg_error_rate: float | None = Field(
        description="The error rate of all providers' calls together (traffic-weighted)."
    )
    avg_response_time_ms: Ms
    providers: list[ProviderSummary]


class ModelSummary(BaseModel):
    provider: str
    model: str
    requests_total: float
    requests_per_second: float | None
    error_rate: float | None = Field(description=ERROR_RATE)
    throttled_share: float | None = Field(None, description=THROTTLED_SHARE)
    client_error_share: float | None = Field(None, description=CLIENT_ERROR_SHARE)
    p50_ms: Ms
    p95_ms: Ms
    p99_ms: Ms
    ttft_p50_ms: Ms = None
    ttft_p95_ms: Ms = None
    tpot_p50_ms: Ms = Field(None, description="p50 of the " + TPOT[0].lower() + TPOT[1:])
    tpot_p95_ms: Ms = Field(None, description="p95 of the " + TPOT[0].lower() + TPOT[1:])
    output_tokens_per_second: float | None = Field(None, description=OUTPUT_TOKENS_PER_SECOND)
    tokens_input: float = 0
    tokens_output: float = 0
    token_efficiency: float | None = Field(None, description="Output tokens per input token.")


class ModelsSummary(BaseModel):
    total_models: int
    models: list[ModelSummary]


class TopEntry(BaseModel):
    key: str = Field(description="A user id, or an API key's fingerprint (never the key).")
    value: float
    error: float = Field(description="Upper bound of the over-estimate in value (Space-Saving).")


class BusinessSummary(BaseModel):
    active_api_keys: float
    active_subscriptions: float
    active_trials: float
    total_tokens_used: float
    total_credits_used: float
    total_cost_usd: float
    credits_per_second: float | None
    cost_by_provider: dict[str, float]
    subscriptions_by_plan: dict[str, float]
    top_users_by_credits: list[TopEntry] = Field(description="This instance's heavy hitters.")
    top_api_keys_by_credits: list[TopEntry]
    top_api_keys_by_requests: list[TopEntry]


class PerformanceSummary(BaseModel):
    requests_per_second: float | None
    error_rate: float | None = Field(description="The error rate of the gateway's own HTTP responses, classed as "
                                          "upstream calls are: 5xx and 408 over all but 429, 401/403/404.")
    p50_ms: Ms
    p95_ms: Ms
    p99_ms: Ms
    inference_p50_ms: Ms
    inference_p95_ms: Ms
    inference_p99_ms: Ms
    ttft_p95_ms: Ms
    tpot_p95_ms: Ms = Field(None, description="p95 of the " + TPOT[0].lower() + TPOT[1:] + " All models together.")
    database_p95_ms: Ms
    cache_hit_rate: float | None
    rate_limited_per_second: float | None
    in_flight: float


class SystemSummary(BaseModel):
    uptime_seconds: float | None
    resident_memory_bytes: float | None
    cpu_seconds_per_second: float | None
    open_fds: float | None
    active_connections: dict[str, float]
    queue_sizes: dict[str, float]
    http_requests_total: float
    exceptions_per_second: float | None
    label_overflows_total: float
    rejected_inputs_total: float


class SummaryMetrics(BaseModel):
    providers: ProvidersSummary | None = None
    models: ModelsSummary | None = None
    business: BusinessSummary | None = None
    performance: PerformanceSummary | None = None
    system: SystemSummary | None = None


class Summary(BaseModel):
    timestamp: datetime
    source: SummarySource
    window_seconds: int
    stale: bool = Field(description="True when a cached value is served after a backend error.")
    errors: list[SummaryError]
    recorded_queries: list[str] = Field(
        default_factory=list,
        description="The summary's queries answered from the recorded series of the shipped recording rules "
                    "(deploy/prometheus/rules/recording.yml) rather than raw expressions: the same figures, "
                    "as of the rules' last evaluation. Empty when none were (local source, a window the rules "
                    "do not cover, rules not loaded or no longer evaluating).")
    metrics: SummaryMetrics
