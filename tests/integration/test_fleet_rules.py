"""Summaries against a real Prometheus scraping the demo service every second: one
instant per summary, no series read twice, and the shipped recording rules read while
Prometheus evaluates them (raw expressions otherwise, the same figures)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import promql_parser
import pytest

from app.catalogue import Category
from app.settings import Settings
from app.summary.models import Summary
from app.summary.service import PACKED_LABELS, SUMMARY_RECORDS, SummaryService, backend_from_settings
from app.telemetry import Telemetry
from tests.deploy.sources import RULE_FILES
from tests.support.servers import MetricsServer, ServiceProcess, poll, start_prometheus, start_service

DEMO_ENV = {"GATEWAY_METRICS_DEMO": "true", "GATEWAY_METRICS_DEMO_RATE": "60", "GATEWAY_METRICS_ACCESS_LOG": "false"}
RECORDING_RULES = [path for path in RULE_FILES if path.name == "recording.yml"]
#: The totals the summary reads from the rules for every window.
RECORDED_TOTALS = {"calls_total", "tokens_total", "credits_total"}
#: What the summary reads from the rules at the default window, all categories asked (the
#: fleet health's calls at the tracker's default minute among them).
EXPECTED_RECORDED = {"calls_per_second", "credits_per_second", "http_buckets", "inference_buckets",
                     "provider_latency_buckets", "ttft_buckets", "tpot_buckets", "tpot_sum", "fleet_calls",
                     "inference_buckets_all", "ttft_buckets_all", "tpot_buckets_all", *RECORDED_TOTALS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsServer, MetricsServer]]:
    """(Prometheus with the recording rules, Prometheus without), both scraping one demo."""
    tmp = tmp_path_factory.mktemp("fleet-rules")
    service: ServiceProcess = start_service(tmp, env=DEMO_ENV, recipe=False)
    try:
        with start_prometheus(tmp, [service.address], rule_files=RECORDING_RULES) as ruled, \
                start_prometheus(tmp, [service.address]) as bare:
            records = {record for recorded in SUMMARY_RECORDS for record in recorded.records}
            names = "|".join(records)
            poll(lambda: len(ruled.query(f'count by (__name__) ({{__name__=~"{names}"}})')["result"])
                 == len(records), 40, "every record the summaries read to have data")
            bare.wait_until("model_inference_duration_seconds_bucket", timeout=40)
            yield ruled, bare
    finally:
        service.stop()


class Recording:
    """A summary service whose batches of queries are kept, with their instant."""

    def __init__(self, prometheus: MetricsServer) -> None:
        settings = Settings(prometheus_url=prometheus.url, query_cache_seconds=0, access_log=False)
        telemetry = Telemetry(settings)
        self.service = SummaryService(settings, telemetry.snapshots, backend_from_settings(settings),
                                      tracker=telemetry.tracker, top_lists=telemetry.top_lists)
        assert self.service.backend is not None
        self.batches: list[tuple[dict[str, str], float | None]] = []
        self.options: list[dict[str, Any]] = []  # each batch's other options
        query_many = self.service.backend.query_many

        def recording(texts: Mapping[str, str], deadline_s: float | None = None, *, at: float | None = None,
                      **options: Any) -> Any:
            self.batches.append((dict(texts), at))
            self.options.append(options)
            return query_many(texts, deadline_s, at=at, **options)

        self.service.backend.query_many = recording  # type: ignore[method-assign]

    def summary(self, window_s: int | None = None) -> Summary:
        assert self.service.rules is not None
        self.service.rules.refresh()
        self.batches.clear()
        self.options.clear()
        return self.service.summary(list(Category), window_s)

    def close(self) -> None:
        self.service.close()


@pytest.fixture
def ruled(demo: tuple[MetricsServer, MetricsServer]) -> Iterator[Recording]:
    recording = Recording(demo[0])
    yield recording
    recording.close()


@pytest.fixture
def bare(demo: tuple[MetricsServer, MetricsServer]) -> Iterator[Recording]:
    recording = Recording(demo[1])
    yield recording
    recording.close()


def subexpressions(node: Any) -> Iterator[str]:
    """Every function call and series selector of a PromQL tree, as text."""
    match node:
        case promql_parser.VectorSelector() | promql_parser.MatrixSelector():
            yield str(node)
            return
        case promql_parser.Call():
            if node.func.name != "label_replace":
                yield str(node)
            for arg in node.args:
                yield from subexpressions(arg)
        case promql_parser.BinaryExpr():
            yield from subexpressions(node.lhs)
            yield from subexpressions(node.rhs)
        case promql_parser.AggregateExpr() | promql_parser.ParenExpr() | promql_parser.UnaryExpr():
            yield from subexpressions(node.expr)


def test_every_query_of_a_summary_carries_its_instant(ruled: Recording) -> None:
    summary = ruled.summary()
    assert len(ruled.batches) == 1  # one batch, every pack in it
    texts, at = ruled.batches[0]
    # A pack per category and one per query by model (app.summary.promql.packs_for).
    assert set(texts) == {"system", "providers", "calls_per_second", "calls_total", "inference_buckets",
                          "ttft_buckets", "tpot_buckets", "tpot_sum", "tokens_total", "business",
                          "performance", "fleet_health"}
    assert at is not None
    assert summary.timestamp.timestamp() == pytest.approx(at, abs=1e-3)


@pytest.mark.parametrize("which", ["ruled", "bare"])
def test_no_subexpression_is_evaluated_twice(which: str, request: pytest.FixtureRequest) -> None:
    recording: Recording = request.getfixturevalue(which)
    recording.summary()
    [(texts, _)] = recording.batches
    seen = Counter(part for text in texts.values() for part in subexpressions(promql_parser.parse(text)))
    assert [part for part, count in seen.items() if count > 1] == []


@pytest.mark.parametrize("which", ["ruled", "bare"])
def test_the_answers_read_into_label_sets_hold_what_they_hold_read_as_dicts(
        which: str, request: pytest.FixtureRequest) -> None:
    recording: Recording = request.getfixturevalue(which)
    recording.summary()
    [(texts, at)], [options] = recording.batches, recording.options
    assert options["into"] is PACKED_LABELS and callable(options["on_answer"])
    backend = recording.service.backend
    assert backend is not None
    read_into, read = backend.query_many(texts, at=at, into=PACKED_LABELS), backend.query_many(texts, at=at)
    assert read_into.errors == read.errors == [] and set(read_into.results) == set(read.results) == set(texts)
    for name, answer in read_into.results.items():
        assert {type(labels) for labels in answer.labels} <= {PACKED_LABELS}
        assert answer.values == read.results[name].values
        assert list(map(dict, answer.labels)) == list(map(dict, read.results[name].labels))


@pytest.mark.parametrize("which", ["ruled", "bare"])
@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_a_summary_is_the_same_whatever_order_its_answers_arrive_in(
        which: str, order: str, request: pytest.FixtureRequest, demo: tuple[MetricsServer, MetricsServer]) -> None:
    # Each category is built as soon as the answers it reads are in: as they arrive, then
    # all after the last in another order, the same summary of the same instant.
    recording: Recording = request.getfixturevalue(which)
    service, backend = recording.service, recording.service.backend
    assert backend is not None
    at = service.instant()
    service.instant = lambda: at  # type: ignore[method-assign]
    # Both summaries once every scrape and rule evaluation up to that instant is written:
    # one still being written would add a sample between them.
    prometheus = demo[0] if which == "ruled" else demo[1]
    series = ["up", *(({record for recorded in SUMMARY_RECORDS for record in recorded.records}) if which == "ruled"
                      else ())]
    poll(lambda: all(float(prometheus.query(f"max(timestamp({name}))")["result"][0]["value"][1]) > at
                     for name in series), 20, "the scrapes and rule evaluations after the summary's instant")
    as_they_came = recording.summary()
    query_many = backend.query_many

    def read_after_the_last(texts: Mapping[str, str], deadline_s: float | None = None, *,
                            on_answer: Any = None, **options: Any) -> Any:
        batch = query_many(texts, deadline_s, **options)
        names = list(batch.results)
        names.reverse() if order == "reversed" else random.Random(7).shuffle(names)
        for name in names:
            on_answer(name, batch.results[name])
        return batch

    backend.query_many = read_after_the_last  # type: ignore[method-assign]
    at_the_end = service.summary(list(Category))
    assert as_they_came.errors == at_the_end.errors == [] and at_the_end.metrics.models is not None
    assert at_the_end.metrics.models.total_models > 0

    def figures(summary: Summary) -> dict[str, Any]:  # the uptime moves on between the two
        return summary.model_dump(exclude={"metrics": {"system": {"uptime_seconds"}}})

    assert figures(at_the_end) == figures(as_they_came)


def test_recorded_series_are_read_while_the_rules_evaluate(ruled: Recording) -> None:
    summary = ruled.summary()
    assert summary.source == "prometheus" and summary.errors == []
    assert set(summary.recorded_queries) == EXPECTED_RECORDED
    text = " ".join(ruled.batches[0][0].values())
    # Per model, the recorded percentiles rather than the buckets, and the observations
    # only where a figure needs them; the fleet's from its own record.
    assert "job_provider_model_le:model_inference_duration_seconds_bucket:rate5m" not in text
    assert "job_provider_model_le:gatewayz_time_per_output_token_seconds_bucket:rate5m{le=\"+Inf\"}" in text
    assert "job_provider_model:gatewayz_time_to_first_token_seconds:p95_rate5m" in text
    assert "job_le:model_inference_duration_seconds_bucket:rate5m" in text
    assert "rate(model_inference_duration_seconds_bucket" not in text
    assert "rate(gatewayz_time_per_output_token_seconds" not in text


def test_raw_expressions_without_the_rules(bare: Recording) -> None:
    summary = bare.summary()
    assert summary.source == "prometheus" and summary.errors == []
    assert summary.recorded_queries == []
    assert "rate(model_inference_duration_seconds_bucket[5m])" in " ".join(bare.batches[0][0].values())


def test_recorded_and_raw_figures_agree(ruled: Recording, demo: tuple[MetricsServer, MetricsServer]) -> None:
    """Evaluated at the instant the upstream rules last ran, the recorded series hold
    exactly what the raw expressions compute (at any later instant, what the traffic of
    less than one evaluation interval changes)."""
    assert ruled.summary().recorded_queries
    service = ruled.service
    assert service.backend is not None
    # The instant the upstream group's last evaluation wrote its samples at.
    data = demo[0].query("max(timestamp(job_provider_model_status:model_inference_requests:rate5m))")
    evaluated = float(data["result"][0]["value"][1])
    service.instant = lambda: evaluated  # type: ignore[method-assign]
    categories = [Category.MODELS, Category.PERFORMANCE, Category.BUSINESS]
    with_rules = service.summary(categories)
    fleet_with_rules, errors, _ = service.fleet_health()
    assert errors == [] and fleet_with_rules
    service.rules = None  # the same Prometheus, every figure from raw expressions
    raw = service.summary(categories)
    fleet_raw, errors, _ = service.fleet_health()
    assert errors == [] and fleet_raw.keys() == fleet_with_rules.keys()
    for provider, figures in fleet_raw.items():
        mine = fleet_with_rules[provider]
        assert (mine.state, mine.circuit) == (figures.state, figures.circuit), provider
        for figure in ("score", "availability", "error_rate"):
            expected = getattr(figures, figure)
            assert getattr(mine, figure) == (None if expected is None else pytest.approx(expected, rel=1e-9)), figure
    assert {"calls_per_second", "inference_buckets", "ttft_buckets", "tpot_buckets", "tpot_sum",
            *RECORDED_TOTALS} <= set(with_rules.recorded_queries)
    assert raw.recorded_queries == []
    assert with_rules.metrics.models is not None and raw.metrics.models is not None
    recorded_models = {(m.provider, m.model): m for m in with_rules.metrics.models.models}
    raw_models = {(m.provider, m.model): m for m in raw.metrics.models.models}
    assert recorded_models.keys() == raw_models.keys() and raw_models
    for key, model in raw_models.items():
        mine = recorded_models[key]
        for figure in ("requests_total", "requests_per_second", "error_rate", "p50_ms", "p95_ms", "p99_ms",
                       "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms", "output_tokens_per_second",
                       "tokens_input", "tokens_output"):
            expected = getattr(model, figure)
            assert getattr(mine, figure) == (None if expected is None else pytest.approx(expected, rel=1e-9)), figure
    assert with_rules.metrics.performance is not None and raw.metrics.performance is not None
    for figure in ("inference_p50_ms", "inference_p95_ms", "inference_p99_ms", "ttft_p95_ms", "tpot_p95_ms"):
        expected = getattr(raw.metrics.performance, figure)
        assert expected and getattr(with_rules.metrics.performance, figure) == pytest.approx(expected, rel=1e-9), figure
    assert any(model.output_tokens_per_second for model in raw_models.values()), "the demo streams"
    assert with_rules.metrics.business is not None and raw.metrics.business is not None
    for figure in ("total_tokens_used", "total_credits_used"):
        expected = getattr(raw.metrics.business, figure)
        assert expected and getattr(with_rules.metrics.business, figure) == pytest.approx(expected, rel=1e-9), figure


def test_a_window_the_rules_do_not_cover_is_computed_raw_over_itself(ruled: Recording) -> None:
    summary = ruled.summary(600)
    assert summary.window_seconds == 600 and set(summary.recorded_queries) == {*RECORDED_TOTALS, "fleet_calls"}
    [(texts, _)] = ruled.batches
    windows = Counter(part.rpartition("[")[2] for text in texts.values()
                      for part in subexpressions(promql_parser.parse(text)) if part.endswith("]"))
    assert set(windows) - {"1m]"} == {"10m]"}  # the fleet health keeps the tracker's minute
