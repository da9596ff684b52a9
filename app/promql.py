"""The named query catalogue of the summaries, and its PromQL.

Every figure of a summary is one :class:`Query`: a rate, a current value or a quantile
of one catalogue family, summed (or maxed) by a few labels. The same ``Query`` object
renders to PromQL for a Prometheus-compatible backend (:meth:`Query.promql`) and is
evaluated from this process's own registry snapshots in local mode
(``app.snapshots``), so both sources mean the same thing by construction. Docs, rules
and dashboards draw on this module too.

Nothing from a request reaches PromQL as text: windows are integers, categories are an
enum, and label values are escaped by :func:`app.backend.escape_label_value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from app.backend import escape_label_value
from app.catalogue import Category


class Kind(StrEnum):
    RATE = "rate"  # per-second rate of a counter (or a histogram's _count/_sum) over the window
    CURRENT = "current"  # the value now (gauges; counter totals)
    QUANTILE = "quantile"  # a quantile of a histogram's observations over the window


MatchOp = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: MatchOp
    value: str

    def promql(self) -> str:
        return f'{self.label}{self.op}"{escape_label_value(self.value)}"'


@dataclass(frozen=True, slots=True)
class Query:
    """One figure of a summary, by the labels in ``by``."""

    name: str
    kind: Kind
    #: A sample name: ``x_total``, a gauge, ``h_count``/``h_sum``; for QUANTILE the histogram.
    metric: str
    by: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()
    quantile: float = 0.0
    #: How series of several instances combine: "sum" for per-process figures, "max" for
    #: gauges every replica reports identically (business state read from the database).
    aggregate: Literal["sum", "max"] = "sum"

    def selector(self, suffix: str = "", extra: tuple[Matcher, ...] = ()) -> str:
        inner = ",".join(m.promql() for m in (*self.matchers, *extra))
        return f"{self.metric}{suffix}{{{inner}}}" if inner else f"{self.metric}{suffix}"

    def promql(self, window_s: int, extra: tuple[Matcher, ...] = ()) -> str:
        """The PromQL of this query over ``window_s``; ``extra`` matchers narrow every
        selector (``job="gateway-metrics"`` when other apps export the same names)."""
        by = ", ".join(self.by)
        window = duration(window_s)
        if self.kind is Kind.QUANTILE:
            grouping = f"le, {by}" if by else "le"
            return (
                f"histogram_quantile({self.quantile:g}, sum by ({grouping}) "
                f"(rate({self.selector('_bucket', extra)}[{window}])))"
            )
        inner = self.selector("", extra)
        if self.kind is Kind.RATE:
            inner = f"rate({inner}[{window}])"
        return f"{self.aggregate} by ({by}) ({inner})" if by else f"{self.aggregate}({inner})"


def duration(seconds: int) -> str:
    """A PromQL duration: ``5m`` for 300, ``90s`` for 90."""
    seconds = int(seconds)
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def rate(name: str, metric: str, *by: str, matchers: tuple[Matcher, ...] = ()) -> Query:
    return Query(name, Kind.RATE, metric, by, matchers)


def current(name: str, metric: str, *by: str, aggregate: Literal["sum", "max"] = "sum",
            matchers: tuple[Matcher, ...] = ()) -> Query:
    return Query(name, Kind.CURRENT, metric, by, matchers, aggregate=aggregate)


def quantile(name: str, q: float, histogram: str, *by: str) -> Query:
    return Query(name, Kind.QUANTILE, histogram, by, quantile=q)


NOT_SUCCESS = (Matcher("status", "!=", "success"),)
SERVER_ERRORS = (Matcher("status_code", "=~", "5.."),)
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _percentiles(prefix: str, histogram: str, *by: str) -> tuple[Query, ...]:
    return tuple(quantile(f"{prefix}_{label}", q, histogram, *by) for label, q in PERCENTILES)


#: The summary's queries, by category. Names are the keys app.summary reads results by.
SUMMARY_QUERIES: dict[Category, tuple[Query, ...]] = {
    Category.PROVIDERS: (
        rate("provider_requests_per_second", "model_inference_requests_total", "provider"),
        rate("provider_errors_per_second", "model_inference_requests_total", "provider", matchers=NOT_SUCCESS),
        rate("provider_latency_sum", "provider_response_time_seconds_sum", "provider"),
        rate("provider_latency_count", "provider_response_time_seconds_count", "provider"),
        quantile("provider_latency_p95", 0.95, "provider_response_time_seconds", "provider"),
        current("provider_cost_usd", "gatewayz_cost_by_provider", "provider"),
    ),
    Category.MODELS: (
        rate("model_requests_per_second", "model_inference_requests_total", "provider", "model"),
        rate("model_errors_per_second", "model_inference_requests_total", "provider", "model",
             matchers=NOT_SUCCESS),
        current("model_requests_total", "model_inference_requests_total", "provider", "model"),
        *_percentiles("model_latency", "model_inference_duration_seconds", "provider", "model"),
        quantile("model_ttft_p50", 0.5, "gatewayz_time_to_first_token_seconds", "provider", "model"),
        quantile("model_ttft_p95", 0.95, "gatewayz_time_to_first_token_seconds", "provider", "model"),
        current("model_tokens_total", "tokens_used_total", "provider", "model", "token_type"),
    ),
    Category.BUSINESS: (
        current("api_keys", "active_api_keys", "status", aggregate="max"),
        current("subscriptions", "active_subscriptions", "plan", "billing_cycle", aggregate="max"),
        current("trials", "trial_active", "status", aggregate="max"),
        current("credit_balance", "user_credit_balance", "plan_type", aggregate="max"),
        current("tokens_total", "tokens_used_total", "token_type"),
        current("credits_total", "credits_used_total"),
        current("cost_by_provider", "gatewayz_cost_by_provider", "provider"),
        rate("credits_per_second", "credits_used_total"),
        rate("api_key_uses_per_second", "api_key_usage_total", "status"),
    ),
    Category.PERFORMANCE: (
        rate("http_requests_per_second", "http_requests_total"),
        rate("http_server_errors_per_second", "http_requests_total", matchers=SERVER_ERRORS),
        *_percentiles("http_latency", "http_request_duration_seconds"),
        *_percentiles("inference_latency", "model_inference_duration_seconds"),
        quantile("ttft_p95", 0.95, "gatewayz_time_to_first_token_seconds"),
        quantile("database_p95", 0.95, "database_query_duration_seconds"),
        current("in_flight", "http_requests_in_flight"),
        rate("cache_hits_per_second", "cache_hits_total"),
        rate("cache_misses_per_second", "cache_misses_total"),
        rate("rate_limited_per_second", "rate_limited_requests_total", "limit_type"),
    ),
    Category.SYSTEM: (
        current("process_start_time", "process_start_time_seconds", aggregate="max"),
        current("resident_memory_bytes", "process_resident_memory_bytes"),
        rate("cpu_seconds_per_second", "process_cpu_seconds_total"),
        current("open_fds", "process_open_fds"),
        current("connections", "active_connections", "type"),
        current("queues", "queue_size", "queue_name"),
        current("http_requests_total", "http_requests_total"),
        rate("exceptions_per_second", "http_exceptions_total", "exception_type"),
        current("label_overflows_total", "gatewayz_label_overflow_total", "metric"),
        current("rejected_inputs_total", "gatewayz_recording_rejected_total", "helper"),
    ),
}


def queries_for(categories: list[Category]) -> list[Query]:
    return [query for category in categories for query in SUMMARY_QUERIES[category]]

