"""The Grafana dashboards of gateway-metrics, as code (grafana-foundation-sdk, Grafana 11.6).

    python deploy/grafana/generate_dashboards.py           # rewrite deploy/grafana/dashboards/*.json
    python deploy/grafana/generate_dashboards.py --check   # exit 1 when a committed file differs

The JSON files are committed (Grafana provisions them from deploy/grafana/dashboards/);
a test keeps them equal to what this script generates. Edit here, never in the JSON.

Every panel reads the `datasource` variable, filters by the `provider` and `model`
variables where its families have those labels, has a unit and a description, and uses
`$__rate_interval` in every rate()/increase(). Panels read the recording rules of
deploy/prometheus/rules/recording.yml (`job_...:...:rate5m`) where one exists: cheap
series, the same numbers the alerts see.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, piechart, prometheus, stat, statetimeline
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
TAGS = ["gateway-metrics"]
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters from the template variables ("All" is the regex .*).
P = 'provider=~"$provider"'
PM = 'provider=~"$provider", model=~"$model"'

# The recording rules the panels read (deploy/prometheus/rules/recording.yml).
HTTP_RATE = "job_endpoint:http_requests:rate5m"
HTTP_BUCKETS = "job_endpoint_le:http_request_duration_seconds_bucket:rate5m"
HTTP_P95 = "job_endpoint:http_request_duration_seconds:p95_rate5m"
CALLS = "job_provider_model:model_inference_requests:rate5m"
CALL_BUCKETS = "job_provider_model_le:model_inference_duration_seconds_bucket:rate5m"
TPOT_BUCKETS = "job_provider_model_le:gatewayz_time_per_output_token_seconds_bucket:rate5m"
TPOT_SUM = "job_provider_model:gatewayz_time_per_output_token_seconds_sum:rate5m"
TOKENS = "job_provider_model_token_type:tokens_used:rate5m"
CREDITS = "job_provider_model:credits_used:rate5m"
COST = "job_provider:gatewayz_cost_by_provider:rate5m"
FAILURES = "job_provider:model_inference_failures:ratio_rate5m"
APDEX = "job_provider:gatewayz_provider_apdex:ratio_rate5m"
SLO_1H = "job:slo_http_errors:ratio_rate1h"
#: The SLO's error budget (99.5%): see the slo group of the recording rules.
ERROR_BUDGET = 0.005
#: Statuses that are the provider's failure (the health score's error rate).
FAILED = "server_error|service_unavailable|timeout"

RED, ORANGE, GREEN = "red", "orange", "green"
CIRCUIT_MAPPINGS = [ValueMap({
    "0": ValueMappingResult(text="closed", color=GREEN, index=0),
    "1": ValueMappingResult(text="open", color=RED, index=1),
    "2": ValueMappingResult(text="half-open", color=ORANGE, index=2),
})]


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for value, color in steps])


HEALTH_THRESHOLDS = thresholds((None, RED), (0.5, ORANGE), (0.8, GREEN))  # SPEC section 5 states
ERROR_THRESHOLDS = thresholds((None, GREEN), (0.01, ORANGE), (0.05, RED))


@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(" ".join(expr.split()), legend, instant)


def _targets(queries: Sequence[Query]) -> list[prometheus.Dataquery]:
    built = []
    for index, query in enumerate(queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        target = target.instant() if query.instant else target.range()
        built.append(target)
    return built


@dataclass
class Board:
    """One dashboard being laid out: panels get ids in order and fill rows of 24 columns."""

    uid: str
    title: str
    description: str
    builder: dashboard.Dashboard = field(init=False)
    _next_id: int = 1

    def __post_init__(self) -> None:
        self.builder = (
            dashboard.Dashboard(self.title).uid(self.uid).description(self.description).tags(TAGS)
            .editable().refresh("30s").time("now-1h", "now").timezone("browser")
            .tooltip(0)  # no shared crosshair: panels have different units
            .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            .with_variable(_label_variable("provider", "Provider",
                                           "label_values(model_inference_requests_total, provider)"))
            .with_variable(_label_variable("model", "Model",
                                           f"label_values(model_inference_requests_total{{{P}}}, model)"))
            .link(dashboard.DashboardLink("gateway-metrics").type("dashboards").tags(TAGS).as_dropdown(True)
                  .include_vars(True).keep_time(True))
        )

    def row(self, title: str) -> None:
        self.builder = self.builder.with_row(dashboard.Row(title).id(self._take_id()))

    def add(self, panel: Any, *, width: int, height: int) -> None:
        self.builder = self.builder.with_panel(panel.id(self._take_id()).span(width).height(height))

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def to_json(self) -> str:
        return json.dumps(self.builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def _label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
        .multi(True).include_all(True).all_value(".*")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )


def _common(panel: Any, title: str, description: str, unit: str, queries: Sequence[Query]) -> Any:
    return panel.title(title).description(description).unit(unit).datasource(DATASOURCE).targets(_targets(queries))


def _last_value() -> common_builders.ReduceDataOptions:
    """Single-value panels show each series' last value (an empty list shows nothing in 11.6)."""
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def timeseries_panel(title: str, description: str, unit: str, *queries: Query, stacked: bool = False,
                     minimum: float | None = 0) -> timeseries.Panel:
    panel = _common(timeseries.Panel(), title, description, unit, queries).fill_opacity(20 if stacked else 8)
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if minimum is not None:
        panel = panel.min(minimum)
    return panel.legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                        .placement(common.LegendPlacement.BOTTOM).show_legend(True))


def stat_panel(title: str, description: str, unit: str, *queries: Query,
               steps: dashboard.ThresholdsConfig | None = None, decimals: float | None = None,
               mappings: list[ValueMap] | None = None) -> stat.Panel:
    panel = (_common(stat.Panel(), title, description, unit, queries).graph_mode(common.BigValueGraphMode.AREA)
             .reduce_options(_last_value()))
    if steps is not None:
        panel = panel.thresholds(steps).color_mode(common.BigValueColorMode.BACKGROUND)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if mappings is not None:
        panel = panel.mappings(mappings).graph_mode(common.BigValueGraphMode.NONE)
    return panel


def gauge_panel(title: str, description: str, unit: str, *queries: Query,
                steps: dashboard.ThresholdsConfig | None = None) -> gauge.Panel:
    panel = _common(gauge.Panel(), title, description, unit, queries).reduce_options(_last_value())
    return panel.thresholds(steps) if steps is not None else panel


def bar_panel(title: str, description: str, unit: str, *queries: Query,
              steps: dashboard.ThresholdsConfig | None = None) -> bargauge.Panel:
    panel = _common(bargauge.Panel(), title, description, unit, queries).orientation(
        common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.GRADIENT).reduce_options(_last_value())
    return panel.thresholds(steps) if steps is not None else panel


def pie_panel(title: str, description: str, unit: str, *queries: Query) -> piechart.Panel:
    return _common(piechart.Panel(), title, description, unit, queries).pie_type("donut").reduce_options(_last_value())


def timeline_panel(title: str, description: str, unit: str, *queries: Query,
                   mappings: list[ValueMap]) -> statetimeline.Panel:
    return _common(statetimeline.Panel(), title, description, unit, queries).mappings(mappings)


def http_percentiles(buckets: str) -> list[Query]:
    return [q(f"histogram_quantile({quantile}, {buckets})", f"p{label}")
            for quantile, label in (("0.50", "50"), ("0.95", "95"), ("0.99", "99"))]


def error_ratio_expr() -> str:
    # `or vector(0)`: no 5xx at all is a 0% error ratio, not "no data".
    return ('(sum(rate(http_requests_total{status_code=~"5.."}[$__rate_interval])) or vector(0))'
            " / sum(rate(http_requests_total[$__rate_interval]))")


# --- the dashboards ----------------------------------------------------------------


def overview() -> Board:
    b = Board("gateway-metrics-overview", "gateway-metrics / Overview",
              "The gateway at a glance: traffic, errors, latency, top routes, tokens, spend and providers.")
    b.row("Now")
    b.add(stat_panel("Requests per second", "Requests the gateway served, all routes, over the last 5 minutes.",
                     "reqps", q(f"sum({HTTP_RATE})")), width=6, height=4)
    b.add(stat_panel("5xx error ratio", "Share of requests answered with a 5xx (what the SLO counts as errors).",
                     "percentunit", q(error_ratio_expr()), steps=ERROR_THRESHOLDS), width=6, height=4)
    b.add(stat_panel("p95 latency", "95th percentile of request duration, all routes, last 5 minutes, to the "
                     "last byte of streamed responses.", "s",
                     q(f"histogram_quantile(0.95, sum by (le) ({HTTP_BUCKETS}))")), width=6, height=4)
    b.add(stat_panel("In flight", "Requests being served right now, all instances.", "short",
                     q("sum(http_requests_in_flight)")), width=6, height=4)
    b.row("Traffic and latency")
    b.add(timeseries_panel("Latency percentiles", "p50, p95 and p99 of request duration, all routes.", "s",
                           *http_percentiles(f"sum by (le) (rate(http_request_duration_seconds_bucket[$__rate_interval]))")),
          width=12, height=8)
    b.add(timeseries_panel("Requests by status class", "Requests per second by the first digit of the status code.",
                           "reqps", q('sum by (class) (label_replace(rate(http_requests_total[$__rate_interval]), '
                                      '"class", "$1", "status_code", "(.).*"))', "{{class}}xx"), stacked=True),
          width=12, height=8)
    b.add(bar_panel("Top 10 routes by requests", "The busiest route templates, last 5 minutes.", "reqps",
                    q(f"topk(10, sum by (endpoint) ({HTTP_RATE}))", "{{endpoint}}", instant=True)),
          width=12, height=8)
    b.add(bar_panel("Top 10 routes by p95 latency", "The slowest route templates by p95, last 5 minutes.", "s",
                    q(f"topk(10, max by (endpoint) ({HTTP_P95}))", "{{endpoint}}", instant=True)),
          width=12, height=8)
    b.row("LLM usage")
    b.add(timeseries_panel("Tokens per second by model and direction", "Input and output tokens per second, "
                           "by model (provider and model variables apply).", "short",
                           q(f"sum by (model, token_type) ({TOKENS}{{{PM}}})", "{{model}} {{token_type}}"),
                           stacked=True), width=12, height=8)
    b.add(timeseries_panel("Spend by provider (USD per hour)", "Upstream cost per hour at the current pace, "
                           "by provider.", "currencyUSD",
                           q(f"sum by (provider) ({COST}{{{P}}}) * 3600", "{{provider}}"), stacked=True),
          width=12, height=8)
    b.row("Providers")
    b.add(stat_panel("Provider circuits", "Each provider's circuit breaker: closed (routing to it), open (routed "
                     "around) or half-open (trial calls). Worst instance shown.", "none",
                     q(f"max by (provider) (gatewayz_provider_circuit_state{{{P}}})", "{{provider}}", instant=True),
                     mappings=CIRCUIT_MAPPINGS), width=12, height=6)
    b.add(stat_panel("Error budget burn rate (1h)", "How fast the last hour spends the 30-day error budget of "
                     "the 99.5% SLO: 1 is sustainable, 14.4 pages (with the 5-minute window).", "none",
                     q(f"max({SLO_1H}) / {ERROR_BUDGET}"), decimals=1,
                     steps=thresholds((None, GREEN), (1, ORANGE), (6, RED))), width=12, height=6)
    return b


def provider_health() -> Board:
    b = Board("gateway-metrics-provider-health", "gateway-metrics / Provider health",
              "Which providers are healthy, why, and how the gateway routes around the others.")
    b.row("Status")
    b.add(stat_panel("Health score", "Composite score 0.4 availability + 0.3 (1 - error rate) + 0.3 Apdex, worst "
                     "instance: healthy from 0.8, degraded from 0.5, unavailable below.", "none",
                     q(f"min by (provider) (gatewayz_provider_health_score{{{P}}})", "{{provider}}", instant=True),
                     steps=HEALTH_THRESHOLDS, decimals=2), width=24, height=5)
    b.add(timeline_panel("Circuit state", "Circuit breaker state per provider over time (worst instance).", "none",
                         q(f"max by (provider) (gatewayz_provider_circuit_state{{{P}}})", "{{provider}}"),
                         mappings=CIRCUIT_MAPPINGS), width=24, height=6)
    b.row("Components of the score")
    b.add(timeseries_panel("Availability", "Share of recent calls and probes that reached the provider "
                           "(0 while the circuit is open), worst instance.", "percentunit",
                           q(f"min by (provider) (provider_availability{{{P}}})", "{{provider}}")), width=8, height=8)
    b.add(timeseries_panel("Failure ratio", "Failed and unreached calls over the calls that count for health, "
                           "last 5 minutes (the score's error rate, fleet-wide).", "percentunit",
                           q(f"max by (provider) ({FAILURES}{{{P}}})", "{{provider}}")), width=8, height=8)
    b.add(timeseries_panel("Apdex", "Latency score: (satisfied + tolerating / 2) / calls, last 5 minutes.",
                           "percentunit", q(f"min by (provider) ({APDEX}{{{P}}})", "{{provider}}")),
          width=8, height=8)
    b.row("Calls and routing")
    b.add(timeseries_panel("Response time p95", "95th percentile of upstream response time by provider.", "s",
                           q("histogram_quantile(0.95, sum by (le, provider) "
                             f"(rate(provider_response_time_seconds_bucket{{{P}}}[$__rate_interval])))",
                             "{{provider}}")), width=12, height=8)
    b.add(timeseries_panel("Calls by outcome", "Upstream calls per second by provider and status.", "reqps",
                           q(f"sum by (provider, status) (rate(model_inference_requests_total{{{PM}}}[$__rate_interval]))",
                             "{{provider}} {{status}}"), stacked=True), width=12, height=8)
    b.add(timeseries_panel("Routing decisions", "Primary choices, failovers to another provider, and panics "
                           "(every candidate excluded).", "reqps",
                           q("sum by (outcome) (rate(gatewayz_routing_decisions_total[$__rate_interval]))",
                             "{{outcome}}"), stacked=True), width=12, height=8)
    b.add(timeseries_panel("Breaker transitions", "Circuit moves by provider and the state entered: a provider "
                           "opening again and again is flapping.", "short",
                           q("sum by (provider, to_state) (increase(gatewayz_provider_circuit_transitions_total"
                             f"{{{P}}}[$__rate_interval]))", "{{provider}} to {{to_state}}")), width=12, height=8)
    return b


def cost() -> Board:
    b = Board("gateway-metrics-cost", "gateway-metrics / Cost analysis",
              "Where the money goes: spend by provider, tokens by model, cost per call and per token.")
    b.add(stat_panel("Spend (USD per hour)", "Upstream spend per hour at the pace of the last 5 minutes.",
                     "currencyUSD", q(f"sum({COST}{{{P}}}) * 3600")), width=8, height=6)
    b.add(pie_panel("Spend per provider", "Share of the current spend per provider (USD per hour).", "currencyUSD",
                    q(f"sum by (provider) ({COST}{{{P}}}) * 3600", "{{provider}}", instant=True)), width=8, height=6)
    b.add(bar_panel("Cost per inference", "Average upstream cost of one call, by provider (USD).", "currencyUSD",
                    q(f"sum by (provider) ({COST}{{{P}}}) / sum by (provider) ({CALLS}{{{P}}})", "{{provider}}",
                      instant=True)), width=8, height=6)
    b.add(timeseries_panel("Spend trend (USD per hour)", "Spend per hour by provider over time.", "currencyUSD",
                           q(f"sum by (provider) ({COST}{{{P}}}) * 3600", "{{provider}}"), stacked=True),
          width=12, height=8)
    b.add(timeseries_panel("Tokens per second by model", "Input and output tokens per second, by model.", "short",
                           q(f"sum by (model) ({TOKENS}{{{PM}}})", "{{model}}"), stacked=True), width=12, height=8)
    b.add(timeseries_panel("Credits per hour by model", "Credits charged to users per hour, by provider and model.",
                           "short", q(f"sum by (provider, model) ({CREDITS}{{{PM}}}) * 3600",
                                      "{{provider}} {{model}}"), stacked=True), width=12, height=8)
    b.add(timeseries_panel("Cost per 1k tokens", "Upstream USD per thousand tokens (input and output), by provider.",
                           "currencyUSD", q(f"sum by (provider) ({COST}{{{P}}}) * 1000 / "
                                            f"sum by (provider) ({TOKENS}{{{P}}})", "{{provider}}")),
          width=12, height=8)
    return b


def models() -> Board:
    b = Board("gateway-metrics-models", "gateway-metrics / Model performance",
              "Per model and provider: traffic, latency percentiles, failures, time to first token, time per "
              "output token, tokens.")
    b.add(timeseries_panel("Requests per second by model", "Upstream calls per second by provider and model.",
                           "reqps", q(f"sum by (provider, model) ({CALLS}{{{PM}}})", "{{provider}} {{model}}"),
                           stacked=True), width=12, height=8)
    b.add(timeseries_panel(
        "Inference latency p50 / p95 / p99", "Upstream inference duration percentiles by provider and model, last "
        "5 minutes (recorded from the buckets summed by le).", "s",
        *[q(f"max by (provider, model) (job_provider_model:model_inference_duration_seconds:p{p}_rate5m{{{PM}}})",
            f"p{p} {{{{provider}}}} {{{{model}}}}") for p in ("50", "95", "99")]), width=12, height=8)
    b.add(bar_panel("Failure ratio by model", "Failed and unreached calls (5xx, timeouts, unreachable) over all "
                    "calls, by provider and model.", "percentunit",
                    q(f'sum by (provider, model) (rate(model_inference_requests_total{{{PM}, status=~"{FAILED}"}}'
                      "[$__rate_interval]) or 0 * rate(model_inference_requests_total"
                      f"{{{PM}}}[$__rate_interval])) / sum by (provider, model) "
                      f"(rate(model_inference_requests_total{{{PM}}}[$__rate_interval]))",
                      "{{provider}} {{model}}", instant=True), steps=ERROR_THRESHOLDS), width=12, height=8)
    b.add(timeseries_panel("Time to first token p95", "95th percentile of the wait for the first streamed token.",
                           "s", q("histogram_quantile(0.95, sum by (le, provider, model) "
                                  f"(rate(gatewayz_time_to_first_token_seconds_bucket{{{PM}}}[$__rate_interval])))",
                                  "{{provider}} {{model}}")), width=12, height=8)
    b.add(timeseries_panel(
        "Time per output token p50 / p95", "Time per output token after the first, of successful streamed calls "
        "(duration - time to first token) / (output tokens - 1), by provider and model, last 5 minutes (recorded "
        "from the buckets summed by le).", "s",
        *[q(f"histogram_quantile({p}, sum by (le, provider, model) ({TPOT_BUCKETS}{{{PM}}}))",
            f"p{label} {{{{provider}}}} {{{{model}}}}") for p, label in (("0.5", "50"), ("0.95", "95"))]),
        width=12, height=8)
    b.add(timeseries_panel(
        "Streaming pace", "Output tokens per second of a streamed answer after its first token: 1 / the mean time "
        "per output token of the streamed calls (each call counts once), by provider and model, last 5 minutes.",
        "short", q(f'sum by (provider, model) ({TPOT_BUCKETS}{{{PM}, le="+Inf"}}) '
                   f"/ sum by (provider, model) ({TPOT_SUM}{{{PM}}})", "{{provider}} {{model}}")),
        width=12, height=8)
    b.add(timeseries_panel("Tokens per second", "Input and output tokens per second by model.", "short",
                           q(f"sum by (model, token_type) ({TOKENS}{{{PM}}})", "{{model}} {{token_type}}"),
                           stacked=True), width=12, height=8)
    b.add(bar_panel("Token efficiency", "Output tokens per input token since start, by provider and model.",
                    "none", q(f"avg by (provider, model) (gatewayz_token_efficiency{{{PM}}})",
                              "{{provider}} {{model}}", instant=True)), width=12, height=8)
    return b


def business() -> Board:
    b = Board("gateway-metrics-business", "gateway-metrics / Business",
              "Subscriptions, API keys, trials, credits and token consumption.")
    # Business gauges are read from the database by every replica: max, not sum.
    b.add(gauge_panel("Active subscriptions", "Active subscriptions, all plans.", "short",
                      q("sum(max by (plan, billing_cycle) (active_subscriptions))")), width=6, height=6)
    b.add(stat_panel("Active API keys", "API keys with status active.", "short",
                     q('max(active_api_keys{status="active"})')), width=6, height=6)
    b.add(stat_panel("Active trials", "Trials running now.", "short", q('max(trial_active{status="active"})')),
          width=6, height=6)
    b.add(stat_panel("Credits per hour", "Credits charged per hour at the pace of the last 5 minutes.", "short",
                     q(f"sum({CREDITS}{{{PM}}}) * 3600")), width=6, height=6)
    b.add(timeseries_panel("Subscriptions by plan", "Active subscriptions by plan and billing cycle.", "short",
                           q("max by (plan, billing_cycle) (active_subscriptions)", "{{plan}} {{billing_cycle}}"),
                           stacked=True), width=12, height=8)
    b.add(timeseries_panel("Trials and paid subscriptions", "Running trials beside paid subscriptions: a trial "
                           "ending without a new subscription is a lost conversion.", "short",
                           q('max(trial_active{status="active"})', "trials"),
                           q('sum(max by (plan, billing_cycle) (active_subscriptions{plan!="free"}))', "paid")),
          width=12, height=8)
    b.add(timeseries_panel("API key uses by outcome", "API key uses per second by outcome.", "reqps",
                           q("sum by (status) (rate(api_key_usage_total[$__rate_interval]))", "{{status}}"),
                           stacked=True), width=12, height=8)
    b.add(timeseries_panel("Tokens per second", "Tokens consumed per second, input and output.", "short",
                           q(f"sum by (token_type) ({TOKENS}{{{PM}}})", "{{token_type}}"), stacked=True),
          width=12, height=8)
    b.add(timeseries_panel("Credit balance by plan", "Sum of user credit balances by plan type.", "short",
                           q("max by (plan_type) (user_credit_balance)", "{{plan_type}}")), width=12, height=8)
    b.add(timeseries_panel("API keys by status", "API keys by status.", "short",
                           q("max by (status) (active_api_keys)", "{{status}}")), width=12, height=8)
    return b


def performance() -> Board:
    b = Board("gateway-metrics-performance", "gateway-metrics / Performance and latency",
              "Response times, throughput, errors, cache, database and rate limits.")
    b.add(timeseries_panel("HTTP latency percentiles", "p50, p95 and p99 of request duration, all routes, last "
                           "5 minutes.", "s", *http_percentiles(f"sum by (le) ({HTTP_BUCKETS})")), width=12, height=8)
    b.add(timeseries_panel("Throughput", "Requests per second, all routes.", "reqps",
                           q("sum(rate(http_requests_total[$__rate_interval]))", "requests")), width=12, height=8)
    b.add(timeseries_panel("Error ratio", "Share of requests answered with a 5xx.", "percentunit",
                           q(error_ratio_expr(), "5xx")), width=12, height=8)
    b.add(timeseries_panel("Cache hit ratio", "Cache hits over lookups, by cache.", "percentunit",
                           q("sum by (cache_name) (rate(cache_hits_total[$__rate_interval])) / "
                             "(sum by (cache_name) (rate(cache_hits_total[$__rate_interval])) + "
                             "sum by (cache_name) (rate(cache_misses_total[$__rate_interval])))", "{{cache_name}}")),
          width=12, height=8)
    b.add(timeseries_panel("Inference latency percentiles", "Upstream inference duration, all selected providers "
                           "and models, last 5 minutes.", "s",
                           *http_percentiles(f"sum by (le) ({CALL_BUCKETS}{{{PM}}})")), width=12, height=8)
    b.add(timeseries_panel("Database query p95", "95th percentile of database query duration by table.", "s",
                           q("histogram_quantile(0.95, sum by (le, table) "
                             "(rate(database_query_duration_seconds_bucket[$__rate_interval])))", "{{table}}")),
          width=12, height=8)
    b.add(timeseries_panel("Rate-limited requests", "Requests refused by a rate limit, by limit.", "reqps",
                           q("sum by (limit_type) (rate(rate_limited_requests_total[$__rate_interval]))",
                             "{{limit_type}}"), stacked=True), width=8, height=8)
    b.add(timeseries_panel("Exceptions", "Exceptions raised while serving requests, by type.", "reqps",
                           q("sum by (exception_type) (rate(http_exceptions_total[$__rate_interval]))",
                             "{{exception_type}}"), stacked=True), width=8, height=8)
    b.add(timeseries_panel("In flight by route", "Requests being served now, by route template.", "short",
                           q("sum by (endpoint) (http_requests_in_flight)", "{{endpoint}}"), stacked=True),
          width=8, height=8)
    b.add(timeseries_panel("Process CPU", "CPU seconds per second of each gateway-metrics process (1 = one core).",
                           "percentunit", q("sum by (instance) (rate(process_cpu_seconds_total[$__rate_interval]))",
                                            "{{instance}}")), width=12, height=8)
    b.add(timeseries_panel("Process memory", "Resident memory of each gateway-metrics process.", "bytes",
                           q("sum by (instance) (process_resident_memory_bytes)", "{{instance}}")),
          width=12, height=8)
    return b


DASHBOARDS: dict[str, Callable[[], Board]] = {
    "overview.json": overview,
    "provider-health.json": provider_health,
    "cost-analysis.json": cost,
    "model-performance.json": models,
    "business.json": business,
    "performance-latency.json": performance,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: make().to_json() for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a committed file differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
