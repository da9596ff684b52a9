"""GATEWAY_METRICS_GENAI_SEMCONV: the OpenTelemetry GenAI instruments, as the OpenTelemetry
SDK's Prometheus exporter writes them, recorded by our helpers under our caps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.catalogue import (
    GENAI_DURATION_BUCKETS,
    GENAI_FAMILIES,
    GENAI_TOKEN_BUCKETS,
    GENAI_TPOT_BUCKETS,
    GENAI_TTFT_BUCKETS,
    Category,
)
from app.genai import genai_provider_name
from app.settings import Settings
from app.telemetry import Telemetry, set_default


@dataclass(frozen=True)
class Call:
    provider: str
    model: str
    duration_s: float
    status_code: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    operation: str | None = None
    # What the spec's attributes are for this call, written out (not derived by our code).
    provider_name: str = ""
    error_type: str | None = None


CALLS = [
    Call("openai", "gpt-4o", 1.3, ttft_s=0.21, input_tokens=120, output_tokens=300, provider_name="openai"),
    Call("openai", "gpt-4o", 0.7, input_tokens=5000, output_tokens=1, provider_name="openai"),
    Call("openai", "gpt-4o", 0.05, status_code=503, provider_name="openai", error_type="service_unavailable"),
    Call("bedrock", "claude-sonnet", 4.0, ttft_s=0.9, input_tokens=2, output_tokens=64, provider_name="aws.bedrock"),
    Call("bedrock", "claude-sonnet", 30.0, error="timeout", provider_name="aws.bedrock", error_type="timeout"),
    Call("openrouter", "llama-3-70b", 0.2, status_code=429, provider_name="openrouter",
         error_type="rate_limit_error"),
    Call("openrouter", "llama-3-70b", 2.0, status_code=500, ttft_s=0.3, provider_name="openrouter",
         error_type="server_error"),
    Call("Mistral", "mistral-large", 0.4, ttft_s=0.1, input_tokens=9, output_tokens=2, operation="text_completion",
         provider_name="mistral_ai"),
    Call("cohere", "embed-v4", 0.03, input_tokens=700, operation="embeddings", provider_name="cohere"),
]


def otel_exposition(calls: list[Call]) -> str:
    """The same calls through the OpenTelemetry SDK and its Prometheus exporter, with the
    spec's instruments: names, units, descriptions and advisory bucket boundaries."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(disable_target_info=True, registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("gen-ai-spec-test")
        token_usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                             description="Number of input and output tokens used.",
                                             explicit_bucket_boundaries_advisory=list(GENAI_TOKEN_BUCKETS))
        duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                          description="GenAI operation duration.",
                                          explicit_bucket_boundaries_advisory=list(GENAI_DURATION_BUCKETS))
        ttft = meter.create_histogram("gen_ai.server.time_to_first_token", unit="s",
                                      description="Time to generate first token for successful responses.",
                                      explicit_bucket_boundaries_advisory=list(GENAI_TTFT_BUCKETS))
        tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s",
            description="Time per output token generated after the first token for successful responses.",
            explicit_bucket_boundaries_advisory=list(GENAI_TPOT_BUCKETS))
        for call in calls:
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": call.operation or "chat",
                "gen_ai.provider.name": call.provider_name,
                "gen_ai.request.model": call.model,
            }
            failed = call.error_type is not None
            duration.record(call.duration_s, {**attributes, "error.type": call.error_type} if failed else attributes)
            if call.input_tokens is not None:
                token_usage.record(call.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            if call.output_tokens is not None:
                token_usage.record(call.output_tokens, {**attributes, "gen_ai.token.type": "output"})
            if not failed and call.ttft_s is not None:
                ttft.record(call.ttft_s, attributes)
                if call.output_tokens is not None and call.output_tokens >= 2:
                    tpot.record((call.duration_s - call.ttft_s) / (call.output_tokens - 1), attributes)
        return generate_latest(registry).decode()
    finally:
        provider.shutdown()


def our_exposition(telemetry: Telemetry, calls: list[Call]) -> str:
    set_default(telemetry)  # the app.metrics helpers record into it
    for call in calls:
        metrics.record_upstream_call(call.provider, call.model, duration_s=call.duration_s,
                                     status_code=call.status_code, error=call.error, ttft_s=call.ttft_s,
                                     input_tokens=call.input_tokens, output_tokens=call.output_tokens,
                                     operation=call.operation)
    return generate_latest(telemetry.metrics.all_registry).decode()


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_genai(text: str) -> tuple[dict[str, str], Series]:
    """(family name -> type, (sample name, labels) -> value) of the gen_ai families; the
    exporter's ``otel_scope_*`` labels name the SDK's instrumentation scope, not the call."""
    types: dict[str, str] = {}
    series: Series = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("gen_ai_"):
            continue
        types[family.name] = family.type
        for sample in family.samples:
            # ``le`` as a number: prometheus_client writes 1.048576e+06 where the exporter
            # writes 1048576.0, the same bucket to every Prometheus parser.
            labels = frozenset((k, repr(float(v)) if k == "le" else v) for k, v in sample.labels.items()
                               if not k.startswith("otel_scope_"))
            series[(sample.name, labels)] = sample.value
    return types, series


def label_names(series: Series) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for (sample, labels), _ in series.items():
        names.setdefault(sample, set()).update(name for name, _ in labels)
    return names


@pytest.fixture
def genai_telemetry() -> Telemetry:
    return Telemetry(Settings(access_log=False, genai_semconv=True))


def test_names_types_labels_buckets_and_values_equal_the_opentelemetry_sdks(genai_telemetry: Telemetry) -> None:
    theirs_types, theirs = parse_genai(otel_exposition(CALLS))
    ours_types, ours = parse_genai(our_exposition(genai_telemetry, CALLS))
    assert ours_types == theirs_types == {
        "gen_ai_client_token_usage": "histogram",
        "gen_ai_client_operation_duration_seconds": "histogram",
        "gen_ai_server_time_to_first_token_seconds": "histogram",
        "gen_ai_server_time_per_output_token_seconds": "histogram",
    }
    assert label_names(ours) == label_names(theirs)
    buckets = {(sample, dict(labels)["le"]) for sample, labels in theirs if sample.endswith("_bucket")}
    assert {(sample, dict(labels)["le"]) for sample, labels in ours if sample.endswith("_bucket")} == buckets
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key


def test_the_catalogue_declares_what_the_exporter_writes(genai_telemetry: Telemetry) -> None:
    theirs_types, theirs = parse_genai(otel_exposition(CALLS))
    names = label_names(theirs)
    for family in GENAI_FAMILIES:
        assert theirs_types[family.name] == family.kind
        assert names[f"{family.name}_count"] == set(family.label_names)


@pytest.mark.parametrize(("provider", "expected"), [
    ("openai", "openai"), ("Anthropic", "anthropic"), ("bedrock", "aws.bedrock"), ("vertex-ai", "gcp.vertex_ai"),
    ("gemini", "gcp.gemini"), ("azure", "azure.ai.openai"), ("xai", "x_ai"), ("groq", "groq"),
    ("openrouter", "openrouter"), ("cerebras", "cerebras"),
])
def test_provider_name_uses_the_specs_well_known_values(provider: str, expected: str) -> None:
    assert genai_provider_name(provider) == expected


def test_off_by_default_nothing_is_registered() -> None:
    telemetry = Telemetry(Settings(access_log=False))
    set_default(telemetry)
    metrics.record_upstream_call("openai", "gpt-4o", duration_s=1.0, ttft_s=0.1, input_tokens=1, output_tokens=9)
    assert telemetry.genai is None
    assert "gen_ai_" not in generate_latest(telemetry.metrics.all_registry).decode()


def test_registered_in_the_models_category_only(genai_telemetry: Telemetry) -> None:
    our_exposition(genai_telemetry, CALLS[:1])
    for category, registry in genai_telemetry.metrics.category_registries.items():
        text = generate_latest(registry).decode()
        assert ("gen_ai_client_token_usage_bucket" in text) == (category is Category.MODELS), category


def test_caps_hold_for_the_genai_families() -> None:
    telemetry = Telemetry(Settings(access_log=False, genai_semconv=True, label_cap=2))
    set_default(telemetry)
    for index in range(5):
        metrics.record_upstream_call("openai", f"model-{index}", duration_s=1.0, input_tokens=1)
    registry = telemetry.metrics.all_registry
    models = {sample.labels["gen_ai_request_model"] for family in registry.collect()
              if family.name == "gen_ai_client_operation_duration_seconds" for sample in family.samples}
    assert models == {"model-0", "model-1", "other"}
    overflow = registry.get_sample_value("gatewayz_label_overflow_total", {
        "metric": "gen_ai_client_operation_duration_seconds", "label": "gen_ai_request_model"})
    assert overflow == 3


def test_tokens_recorded_alone_and_late_usage_reach_the_genai_families(genai_telemetry: Telemetry) -> None:
    set_default(genai_telemetry)
    metrics.record_tokens_used("openai", "gpt-4o", 10, 20)
    with metrics.track_model_inference("openai", "gpt-4o") as call:
        call.first_token()
    call.usage(3, 11)
    registry = genai_telemetry.metrics.all_registry
    base = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
    assert registry.get_sample_value("gen_ai_client_token_usage_count", {**base, "gen_ai_token_type": "output"}) == 2
    assert registry.get_sample_value("gen_ai_client_token_usage_sum", {**base, "gen_ai_token_type": "output"}) == 31
    assert registry.get_sample_value("gen_ai_client_operation_duration_seconds_count",
                                     {**base, "error_type": ""}) == 1
    assert registry.get_sample_value("gen_ai_server_time_per_output_token_seconds_count", base) == 1
