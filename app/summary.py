"""Building the summary's categories from the results of the named queries.

Inputs are the results of ``app.promql.SUMMARY_QUERIES`` (from either source) and the
providers' health; the output is the models of ``app.summary_models``. Ratios are taken
here from their rates (errors / requests, hits / (hits + misses)), so a window without
traffic gives ``null``, not a division by zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from app.catalogue import Category
from app.recording import TOP_KEYS_BY_CREDITS, TOP_KEYS_BY_REQUESTS, TOP_USERS_BY_CREDITS
from app.snapshots import Result
from app.summary_models import (
    BusinessSummary,
    ModelsSummary,
    ModelSummary,
    PerformanceSummary,
    ProvidersSummary,
    ProviderSummary,
    SummaryMetrics,
    SystemSummary,
    TopEntry,
)
from app.topn import SpaceSaving

Results = Mapping[str, Result]


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """A provider's health as the summary shows it (from the tracker or from PromQL)."""

    score: float | None
    state: str
    circuit: str | None = None
    availability: float | None = None


def number(value: float | None) -> float | None:
    """A JSON-safe figure: NaN and infinities (undefined in the window) become None."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return number(part / whole)


def ms(seconds: float | None) -> float | None:
    seconds = number(seconds)
    return None if seconds is None else round(seconds * 1000.0, 3)


def _get(results: Results, name: str, *key: str) -> float | None:
    return number(results.get(name, {}).get(tuple(key)))


def _total(results: Results, name: str) -> float:
    return sum(v for v in results.get(name, {}).values() if number(v) is not None)


def _by_first_label(results: Results, name: str) -> dict[str, float]:
    return {key[0]: value for key, value in sorted(results.get(name, {}).items()) if number(value) is not None}


def build_providers(results: Results, health: Mapping[str, HealthFigures]) -> ProvidersSummary:
    names = sorted(
        {key[0] for key in results.get("provider_requests_per_second", {})}
        | {key[0] for key in results.get("provider_cost_usd", {})}
        | set(health)
    )
    providers = []
    for name in names:
        figures = health.get(name, HealthFigures(score=None, state="unknown"))
        requests = _get(results, "provider_requests_per_second", name)
        providers.append(
            ProviderSummary(
                provider=name,
                health_score=figures.score,
                state=figures.state,
                circuit=figures.circuit,
                availability=figures.availability,
                error_rate=ratio(_get(results, "provider_errors_per_second", name) or 0.0, requests),
                requests_per_second=requests,
                avg_response_time_ms=ms(
                    ratio(_get(results, "provider_latency_sum", name), _get(results, "provider_latency_count", name))
                ),
                p95_response_time_ms=ms(_get(results, "provider_latency_p95", name)),
                cost_usd=_get(results, "provider_cost_usd", name),
            )
        )
    states = [p.state for p in providers]
    total_requests = _total(results, "provider_requests_per_second")
    return ProvidersSummary(
        total_providers=len(providers),
        healthy_providers=states.count("healthy"),
        degraded_providers=states.count("degraded"),
        unavailable_providers=states.count("unavailable"),
        unknown_providers=states.count("unknown"),
        avg_error_rate=ratio(_total(results, "provider_errors_per_second"), total_requests),
        avg_response_time_ms=ms(
            ratio(_total(results, "provider_latency_sum"), _total(results, "provider_latency_count"))
        ),
        providers=providers,
    )


def build_models(results: Results) -> ModelsSummary:
    tokens: dict[tuple[str, str], dict[str, float]] = {}
    for (provider, model, token_type), value in results.get("model_tokens_total", {}).items():
        tokens.setdefault((provider, model), {})[token_type] = value
    keys = sorted(set(results.get("model_requests_total", {})) | set(tokens))
    models = []
    for provider, model in keys:
        requests = _get(results, "model_requests_per_second", provider, model)
        counts = tokens.get((provider, model), {})
        models.append(
            ModelSummary(
                provider=provider,
                model=model,
                requests_total=_get(results, "model_requests_total", provider, model) or 0.0,
                requests_per_second=requests,
                error_rate=ratio(_get(results, "model_errors_per_second", provider, model) or 0.0, requests),
                p50_ms=ms(_get(results, "model_latency_p50", provider, model)),
                p95_ms=ms(_get(results, "model_latency_p95", provider, model)),
                p99_ms=ms(_get(results, "model_latency_p99", provider, model)),
                ttft_p50_ms=ms(_get(results, "model_ttft_p50", provider, model)),
                ttft_p95_ms=ms(_get(results, "model_ttft_p95", provider, model)),
                tokens_input=counts.get("input", 0.0),
                tokens_output=counts.get("output", 0.0),
                token_efficiency=ratio(counts.get("output", 0.0), counts.get("input")),
            )
        )
    return ModelsSummary(total_models=len(models), models=models)


def _top(table: SpaceSaving, n: int) -> list[TopEntry]:
    return [TopEntry(key=hit.key, value=round(hit.value, 6), error=round(hit.error, 6)) for hit in table.top(n)]


def build_business(results: Results, top_n: int) -> BusinessSummary:
    subscriptions = {
        f"{plan}/{cycle}": value for (plan, cycle), value in sorted(results.get("subscriptions", {}).items())
    }
    cost = _by_first_label(results, "cost_by_provider")
    return BusinessSummary(
        active_api_keys=_get(results, "api_keys", "active") or 0.0,
        active_subscriptions=sum(subscriptions.values()),
        active_trials=_get(results, "trials", "active") or 0.0,
        total_tokens_used=_total(results, "tokens_total"),
        total_credits_used=_total(results, "credits_total"),
        total_cost_usd=sum(cost.values()),
        credits_per_second=_get(results, "credits_per_second"),
        cost_by_provider=cost,
        subscriptions_by_plan=subscriptions,
        top_users_by_credits=_top(TOP_USERS_BY_CREDITS, top_n),
        top_api_keys_by_credits=_top(TOP_KEYS_BY_CREDITS, top_n),
        top_api_keys_by_requests=_top(TOP_KEYS_BY_REQUESTS, top_n),
    )


def build_performance(results: Results) -> PerformanceSummary:
    requests = _get(results, "http_requests_per_second")
    hits = _get(results, "cache_hits_per_second")
    misses = _get(results, "cache_misses_per_second")
    lookups = None if hits is None and misses is None else (hits or 0.0) + (misses or 0.0)
    return PerformanceSummary(
        requests_per_second=requests,
        error_rate=ratio(_get(results, "http_server_errors_per_second") or 0.0, requests),
        p50_ms=ms(_get(results, "http_latency_p50")),
        p95_ms=ms(_get(results, "http_latency_p95")),
        p99_ms=ms(_get(results, "http_latency_p99")),
        inference_p50_ms=ms(_get(results, "inference_latency_p50")),
        inference_p95_ms=ms(_get(results, "inference_latency_p95")),
        inference_p99_ms=ms(_get(results, "inference_latency_p99")),
        ttft_p95_ms=ms(_get(results, "ttft_p95")),
        database_p95_ms=ms(_get(results, "database_p95")),
        cache_hit_rate=ratio(hits or 0.0, lookups),
        rate_limited_per_second=_total(results, "rate_limited_per_second") if "rate_limited_per_second" in results else None,
        in_flight=_total(results, "in_flight"),
    )


def build_system(results: Results) -> SystemSummary:
    started = _get(results, "process_start_time")
    return SystemSummary(
        uptime_seconds=None if started is None else round(time.time() - started, 3),
        resident_memory_bytes=_get(results, "resident_memory_bytes"),
        cpu_seconds_per_second=_get(results, "cpu_seconds_per_second"),
        open_fds=_get(results, "open_fds"),
        active_connections=_by_first_label(results, "connections"),
        queue_sizes=_by_first_label(results, "queues"),
        http_requests_total=_total(results, "http_requests_total"),
        exceptions_per_second=_total(results, "exceptions_per_second") if "exceptions_per_second" in results else None,
        label_overflows_total=_total(results, "label_overflows_total"),
        rejected_inputs_total=_total(results, "rejected_inputs_total"),
    )


def build_metrics(
    categories: list[Category],
    results: Results,
    health: Mapping[str, HealthFigures],
    top_n: int,
) -> SummaryMetrics:
    metrics = SummaryMetrics()
    if Category.PROVIDERS in categories:
        metrics.providers = build_providers(results, health)
    if Category.MODELS in categories:
        metrics.models = build_models(results)
    if Category.BUSINESS in categories:
        metrics.business = build_business(results, top_n)
    if Category.PERFORMANCE in categories:
        metrics.performance = build_performance(results)
    if Category.SYSTEM in categories:
        metrics.system = build_system(results)
    return metrics
