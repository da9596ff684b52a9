"""Building the summary's categories from the results of the named queries.

Inputs are the results of ``app.summary.promql.SUMMARY_QUERIES`` (from either source) and the
providers' health; the output is the models of ``app.summary.models``. Coarser figures
are sums of finer ones (a provider's calls are the sum of its models' calls), quantiles
come from bucket rates (app.summary.quantiles), and ratios are divided here, so a window without
traffic gives ``null``, not a division by zero.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import repeat

from pydantic import TypeAdapter

from app.catalogue import Category
from app.scoring.outcome import ERRORS, SCORED, Outcome, classify
from app.summary.models import (
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
from app.summary.promql import CALLER_FAULT_STATUSES, ERROR_STATUSES, SCORED_STATUSES, THROTTLED_STATUSES
from app.summary.quantiles import Result, many_quantiles_by, observations_by, quantiles_by
from app.topn import SpaceSaving, TopLists

Results = Mapping[str, Result]
Group = Callable[[tuple[str, ...]], tuple[str, ...]]

PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """A provider's health as the summary shows it (from the tracker or from PromQL)."""

    score: float | None
    state: str
    circuit: str | None = None
    availability: float | None = None
    error_rate: float | None = None


def number(value: float | None) -> float | None:
    """A JSON-safe figure: NaN and infinities (undefined in the window) become None."""
    return value if value is not None and math.isfinite(value) else None


def ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return number(part / whole)


def ms(seconds: float | None) -> float | None:
    seconds = number(seconds)
    return None if seconds is None else round(seconds * 1000.0, 3)


def numbers(result: Result) -> Result:
    """:func:`number` of every value of ``result``, the undefined ones left out (a
    missing key reads as None): one pass, not a call per figure."""
    isfinite = math.isfinite
    return {key: value for key, value in result.items() if isfinite(value)}


def ratios(parts: Result, wholes: Result, missing_part: float | None = 0.0) -> Result:
    """:func:`ratio` of ``parts[key]`` (``missing_part`` when absent; None: no ratio) to
    ``wholes[key]`` for every key where it is defined."""
    isfinite = math.isfinite
    return {key: share for key, whole in wholes.items() if whole
            for part in (parts.get(key, missing_part),) if part is not None
            for share in (part / whole,) if isfinite(share)}


def milliseconds(seconds: Result) -> Result:
    """:func:`ms` of every value of ``seconds``, the undefined ones left out."""
    isfinite = math.isfinite
    return {key: round(value * 1000.0, 3) for key, value in seconds.items() if isfinite(value)}


def rollup(result: Result, group: Group, keep: Callable[[tuple[str, ...]], bool] = lambda key: True) -> Result:
    """``result`` summed to the coarser keys ``group`` gives (like PromQL's ``sum by``)."""
    summed: Result = {}
    for key, value in result.items():
        if keep(key) and math.isfinite(value):
            coarse = group(key)
            summed[coarse] = summed.get(coarse, 0.0) + value
    return summed


def _total(results: Results, name: str) -> float:
    return sum(rollup(results.get(name, {}), lambda key: ()).values())


def _one(results: Results, name: str) -> float | None:
    return number(results.get(name, {}).get(()))


def _by_first_label(results: Results, name: str) -> dict[str, float]:
    return {key[0]: value for key, value in sorted(rollup(results.get(name, {}), lambda key: key[:1]).items())}


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Calls per second of ``calls_per_second`` rolled up by ``group``, by outcome class
    (app.scoring.outcome): every error rate is ``errors / scored``."""

    calls: Result
    scored: Result
    errors: Result
    throttled: Result
    caller_faults: Result

    @classmethod
    def of(cls, calls_per_second: Result, group: Group) -> Outcomes:
        """One pass over the calls (keys are (provider, model, status)), each class summed
        in the calls' order, as a :func:`rollup` of it would."""
        outcomes = cls({}, {}, {}, {}, {})
        classes = ((outcomes.scored, SCORED_STATUSES), (outcomes.errors, ERROR_STATUSES),
                   (outcomes.throttled, THROTTLED_STATUSES), (outcomes.caller_faults, CALLER_FAULT_STATUSES))
        # A status's classes, looked up once per status rather than tested per call: an
        # answer has a few statuses and, at fleet scale, thousands of series.
        sums_of: dict[str, tuple[Result, ...]] = {}
        calls = outcomes.calls
        for key, value in calls_per_second.items():
            if not math.isfinite(value):
                continue
            coarse = group(key)
            calls[coarse] = calls.get(coarse, 0.0) + value
            status = key[-1]
            sums = sums_of.get(status)
            if sums is None:
                sums = sums_of[status] = tuple(summed for summed, statuses in classes if status in statuses)
            for summed in sums:
                summed[coarse] = summed.get(coarse, 0.0) + value
        return outcomes

    def error_rates(self) -> Result:
        return ratios(self.errors, self.scored)

    def throttled_shares(self) -> Result:
        return ratios(self.throttled, self.calls)

    def client_error_shares(self) -> Result:
        return ratios(self.caller_faults, self.calls)


def _http_outcome(code: str) -> Outcome | None:
    """The outcome class of one of the gateway's own HTTP responses (``status_code`` label).
    A status code is three digits (RFC 9110): any other label a backend sends has none and
    is never a cache key, so the cache's 1,024 keys stay a few characters each."""
    return _status_outcome(code) if len(code) == 3 and code.isdecimal() else None


@functools.lru_cache(maxsize=1024)
def _status_outcome(code: str) -> Outcome:
    return classify(int(code), None, None)


def _percentiles(buckets: Result, group: Group) -> dict[str, Result]:
    """p50, p95 and p99 of ``buckets`` by ``group``, in milliseconds (see :func:`milliseconds`)."""
    by_q = many_quantiles_by(buckets, tuple(PERCENTILES.values()), group)
    return {label: milliseconds(by_q[q]) for label, q in PERCENTILES.items()}


def build_providers(results: Results, health: Mapping[str, HealthFigures]) -> ProvidersSummary:
    by_provider: Group = lambda key: key[:1]  # noqa: E731
    outcomes = Outcomes.of(results.get("calls_per_second", {}), by_provider)
    calls = outcomes.calls
    error_rates, throttled, caller_faults = outcomes.error_rates(), outcomes.throttled_shares(), \
        outcomes.client_error_shares()
    latency_buckets = results.get("provider_latency_buckets", {})
    latency_count = observations_by(latency_buckets, by_provider)
    latency_sum = results.get("provider_latency_sum", {})
    p95 = quantiles_by(latency_buckets, 0.95, by_provider)
    cost = results.get("cost_usd", {})
    names = sorted({key[0] for key in calls} | {key[0] for key in cost} | set(health))
    providers = []
    for name in names:
        key = (name,)
        figures = health.get(name, HealthFigures(score=None, state="unknown"))
        providers.append(
            ProviderSummary(
                provider=name,
                health_score=figures.score,
                state=figures.state,
                circuit=figures.circuit,
                availability=figures.availability,
                error_rate=error_rates.get(key),
                throttled_share=throttled.get(key),
                client_error_share=caller_faults.get(key),
                requests_per_second=number(calls.get(key)),
                avg_response_time_ms=ms(ratio(latency_sum.get(key), latency_count.get(key))),
                p95_response_time_ms=ms(p95.get(key)),
                cost_usd=number(cost.get(key)),
            )
        )
    states = [p.state for p in providers]
    return ProvidersSummary(
        total_providers=len(providers),
        healthy_providers=states.count("healthy"),
        degraded_providers=states.count("degraded"),
        unavailable_providers=states.count("unavailable"),
        unknown_providers=states.count("unknown"),
        avg_error_rate=ratio(sum(outcomes.errors.values()), sum(outcomes.scored.values())),
        avg_response_time_ms=ms(ratio(sum(latency_sum.values()), sum(latency_count.values()))),
        providers=providers,
    )


_BY_MODEL: Group = lambda key: key[:2]  # noqa: E731


def _call_columns(calls_per_second: Result) -> dict[str, Result]:
    outcomes = Outcomes.of(calls_per_second, _BY_MODEL)
    return {"requests_per_second": numbers(outcomes.calls), "error_rate": outcomes.error_rates(),
            "throttled_share": outcomes.throttled_shares(), "client_error_share": outcomes.client_error_shares()}


def _percentile_columns(prefix: str, *labels: str) -> Callable[[Result], dict[str, Result]]:
    def columns(buckets: Result) -> dict[str, Result]:
        by_label = _percentiles(buckets, _BY_MODEL)
        return {f"{prefix}{label}_ms": by_label[label] for label in labels}
    return columns


def _pace_columns(tpot_buckets: Result, tpot_sum: Result) -> dict[str, Result]:
    # Streamed calls per second over the seconds per second they spent per token after the
    # first: 1 / the mean time per output token (models.OUTPUT_TOKENS_PER_SECOND).
    return {"output_tokens_per_second": ratios(observations_by(tpot_buckets, _BY_MODEL), tpot_sum, None)}


def _token_columns(tokens_total: Result) -> dict[str, Result]:
    inputs: Result = {}
    outputs: Result = {}
    for (provider, model, token_type), value in tokens_total.items():
        if token_type == "input":
            inputs[provider, model] = value
        elif token_type == "output":
            outputs[provider, model] = value
    # Every token type counts for the rows (_tokens): a model that used any has one.
    return {"tokens_input": inputs, "tokens_output": outputs, "token_efficiency": ratios(outputs, inputs),
            "_tokens": tokens_total}


#: The models table's columns, in groups each computed from the answers it names.
_MODEL_COLUMNS: tuple[tuple[tuple[str, ...], Callable[..., dict[str, Result]]], ...] = (
    (("calls_per_second",), _call_columns),
    (("calls_total",), lambda totals: {"requests_total": totals}),
    (("inference_buckets",), _percentile_columns("", "p50", "p95", "p99")),
    (("ttft_buckets",), _percentile_columns("ttft_", "p50", "p95")),
    (("tpot_buckets",), _percentile_columns("tpot_", "p50", "p95")),
    (("tpot_buckets", "tpot_sum"), _pace_columns),
    (("tokens_total",), _token_columns),
)
#: Columns a model's row reads as 0 rather than null when it has none.
_ZERO_WHEN_MISSING = frozenset({"requests_total", "tokens_input", "tokens_output"})
_MODEL_ROWS = TypeAdapter(list[ModelSummary])


class ModelTable:
    """The models table, a column at a time (hundreds of models at fleet scale: a row
    only looks its figures up). Each group of columns is computed as soon as the answers
    it reads are in: :meth:`add` as each answer arrives, so the columns of the first are
    computed while the last still travel; :meth:`summary` computes what is left and
    assembles the rows."""

    def __init__(self) -> None:
        self.columns: dict[str, Result] = {}
        self._pending = list(_MODEL_COLUMNS)

    def add(self, results: Results) -> None:
        """Compute every group of columns whose answers are all in ``results``."""
        for group in [group for group in self._pending if all(name in results for name in group[0])]:
            self._compute(group, results)

    def summary(self, results: Results) -> ModelsSummary:
        for group in list(self._pending):  # a missing answer reads as no series
            self._compute(group, results)
        columns = self.columns
        # A model has a row once it made a call or used a token in the window.
        keys = sorted(columns["requests_total"].keys() | columns["requests_per_second"].keys()
                      | {key[:2] for key in columns["_tokens"]})
        names = [name for name in columns if not name.startswith("_")]
        # Each figure a column at a time (the loops in C), the rows validated in one call.
        figures = [list(map(columns[name].get, keys, repeat(0.0 if name in _ZERO_WHEN_MISSING else None)))
                   for name in names]
        fields = ("provider", "model", *names)
        rows = [dict(zip(fields, (*key, *row), strict=True))
                for key, row in zip(keys, zip(*figures, strict=True), strict=True)]
        return ModelsSummary(total_models=len(rows), models=_MODEL_ROWS.validate_python(rows))

    def _compute(self, group: tuple[tuple[str, ...], Callable[..., dict[str, Result]]], results: Results) -> None:
        self._pending.remove(group)
        names, compute = group
        self.columns.update(compute(*(results.get(name, {}) for name in names)))


def build_models(results: Results, table: ModelTable | None = None) -> ModelsSummary:
    """Every model's row, from ``table`` where the columns were computed as the answers
    arrived."""
    return (table or ModelTable()).summary(results)


def _top(table: SpaceSaving, n: int) -> list[TopEntry]:
    return [TopEntry(key=hit.key, value=round(hit.value, 6), error=round(hit.error, 6)) for hit in table.top(n)]


def build_business(results: Results, top_n: int, top_lists: TopLists) -> BusinessSummary:
    subscriptions = {
        f"{plan}/{cycle}": value for (plan, cycle), value in sorted(results.get("subscriptions", {}).items())
    }
    cost = _by_first_label(results, "cost_usd")
    return BusinessSummary(
        active_api_keys=results.get("api_keys", {}).get(("active",), 0.0),
        active_subscriptions=sum(subscriptions.values()),
        active_trials=results.get("trials", {}).get(("active",), 0.0),
        total_tokens_used=_total(results, "tokens_total"),
        total_credits_used=_total(results, "credits_total"),
        total_cost_usd=sum(cost.values()),
        credits_per_second=_one(results, "credits_per_second"),
        cost_by_provider=cost,
        subscriptions_by_plan=subscriptions,
        top_users_by_credits=_top(top_lists.users_by_credits, top_n),
        top_api_keys_by_credits=_top(top_lists.keys_by_credits, top_n),
        top_api_keys_by_requests=_top(top_lists.keys_by_requests, top_n),
    )


def build_performance(results: Results) -> PerformanceSummary:
    http = results.get("http_per_second", {})
    requests = sum(http.values()) if http else None
    outcomes = [(_http_outcome(code), value) for (code,), value in http.items()]
    errors = sum(value for outcome, value in outcomes if outcome in ERRORS)
    scored = sum(value for outcome, value in outcomes if outcome in SCORED)
    overall: Group = lambda key: ()  # noqa: E731
    http_latency = _percentiles(results.get("http_buckets", {}), overall)
    inference = _percentiles(results.get("inference_buckets_all", {}), overall)
    ttft = results.get("ttft_buckets_all", {})
    hits = _one(results, "cache_hits_per_second")
    misses = _one(results, "cache_misses_per_second")
    lookups = None if hits is None and misses is None else (hits or 0.0) + (misses or 0.0)
    return PerformanceSummary(
        requests_per_second=number(requests),
        error_rate=ratio(errors, scored) if http else None,
        p50_ms=http_latency["p50"].get(()),
        p95_ms=http_latency["p95"].get(()),
        p99_ms=http_latency["p99"].get(()),
        inference_p50_ms=inference["p50"].get(()),
        inference_p95_ms=inference["p95"].get(()),
        inference_p99_ms=inference["p99"].get(()),
        ttft_p95_ms=ms(quantiles_by(ttft, 0.95).get(())),
        tpot_p95_ms=ms(quantiles_by(results.get("tpot_buckets_all", {}), 0.95).get(())),
        database_p95_ms=ms(quantiles_by(results.get("database_buckets", {}), 0.95).get(())),
        cache_hit_rate=ratio(hits or 0.0, lookups),
        rate_limited_per_second=_one(results, "rate_limited_per_second"),
        in_flight=_total(results, "in_flight"),
    )


def build_system(results: Results) -> SystemSummary:
    started = _one(results, "process_start_time")
    return SystemSummary(
        uptime_seconds=None if started is None else round(time.time() - started, 3),
        resident_memory_bytes=_one(results, "resident_memory_bytes"),
        cpu_seconds_per_second=_one(results, "cpu_seconds_per_second"),
        open_fds=_one(results, "open_fds"),
        active_connections=_by_first_label(results, "connections"),
        queue_sizes=_by_first_label(results, "queues"),
        http_requests_total=_total(results, "http_requests_total"),
        exceptions_per_second=_one(results, "exceptions_per_second"),
        label_overflows_total=_total(results, "label_overflows_total"),
        rejected_inputs_total=_total(results, "rejected_inputs_total"),
    )


CategorySummary = ProvidersSummary | ModelsSummary | BusinessSummary | PerformanceSummary | SystemSummary


def build_category(
    category: Category,
    results: Results,
    health: Mapping[str, HealthFigures],
    top_n: int,
    top_lists: TopLists,
    models: ModelTable | None = None,
) -> CategorySummary:
    """One category's figures (``models``: the models table's columns computed so far)."""
    match category:
        case Category.PROVIDERS:
            return build_providers(results, health)
        case Category.MODELS:
            return build_models(results, models)
        case Category.BUSINESS:
            return build_business(results, top_n, top_lists)
        case Category.PERFORMANCE:
            return build_performance(results)
        case Category.SYSTEM:
            return build_system(results)


def build_metrics(
    categories: list[Category],
    results: Results,
    health: Mapping[str, HealthFigures],
    top_n: int,
    top_lists: TopLists,
    models: ModelTable | None = None,
    built: Mapping[Category, CategorySummary] | None = None,
) -> SummaryMetrics:
    """The categories asked for; those in ``built`` were built already."""
    built = built or {}
    return SummaryMetrics(**{
        category.value: built[category] if category in built
        else build_category(category, results, health, top_n, top_lists, models)
        for category in Category if category in categories
    })
