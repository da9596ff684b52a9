"""The catalogue is the SPEC's metric table, and every endpoint exposes exactly its part."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from app.catalogue import FAMILIES, FAMILIES_BY_NAME, Category
from app.demo import DemoTraffic
from app.settings import Settings
from app.telemetry import Telemetry
from tests.conftest import promtool_check_metrics

# SPEC section 2, as written there: family -> (labels, categories).
SPEC_FAMILIES: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "http_requests_total": (("method", "endpoint", "status_code"), {"system"}),
    "http_request_duration_seconds": (("method", "endpoint"), {"system", "performance"}),
    "http_requests_in_flight": (("method", "endpoint"), {"system"}),
    "http_exceptions_total": (("method", "endpoint", "exception_type"), {"system"}),
    "active_connections": (("type",), {"system"}),
    "queue_size": (("queue_name",), {"system"}),
    "provider_availability": (("provider",), {"providers"}),
    "provider_error_rate": (("provider",), {"providers"}),
    "provider_response_time_seconds": (("provider",), {"providers"}),
    "gatewayz_provider_health_score": (("provider",), {"providers"}),
    "gatewayz_provider_circuit_state": (("provider",), {"providers"}),
    "gatewayz_cost_by_provider": (("provider",), {"providers", "business"}),
    "gatewayz_routing_decisions_total": (("outcome",), {"providers"}),
    "gatewayz_provider_circuit_transitions_total": (("provider", "to_state"), {"providers"}),
    "model_inference_requests_total": (("provider", "model", "status"), {"models"}),
    "model_inference_duration_seconds": (("provider", "model"), {"models", "performance"}),
    "tokens_used_total": (("provider", "model", "token_type"), {"models"}),
    "gatewayz_time_to_first_token_seconds": (("provider", "model"), {"models", "performance"}),
    "gatewayz_time_per_output_token_seconds": (("provider", "model"), {"models", "performance"}),
    "gatewayz_token_efficiency": (("provider", "model"), {"models"}),
    "credits_used_total": (("provider", "model"), {"business"}),
    "api_key_usage_total": (("status",), {"business"}),
    "active_api_keys": (("status",), {"business"}),
    "user_credit_balance": (("plan_type",), {"business"}),
    "trial_active": (("status",), {"business"}),
    "active_subscriptions": (("plan", "billing_cycle"), {"business"}),
    "database_queries_total": (("table", "operation"), {"performance"}),
    "database_query_duration_seconds": (("table",), {"performance"}),
    "cache_hits_total": (("cache_name",), {"performance"}),
    "cache_misses_total": (("cache_name",), {"performance"}),
    "cache_size_bytes": (("cache_name",), {"performance"}),
    "rate_limited_requests_total": (("limit_type",), {"performance"}),
    "current_rate_limit": (("limit_type",), {"performance"}),
}
# Families of our own beside the SPEC's: the label-cap and rejected-input counters, the
# Apdex zones that let PromQL compute the health score fleet-wide, and the errors of
# sharing provider outcomes between processes.
SELF_FAMILIES = {"gatewayz_label_overflow_total", "gatewayz_recording_rejected_total", "gatewayz_provider_apdex_total",
                 "gatewayz_health_sharing_errors_total"}
FORBIDDEN_LABELS = {"user_id", "api_key", "request_id", "path", "raw_path", "prompt"}


def family_name(exposed: str, kind: str) -> str:
    # The text parser strips a counter's _total suffix from the family name.
    return f"{exposed}_total" if kind == "counter" else exposed


def exposed_families(text: str) -> set[str]:
    return {family_name(f.name, f.type) for f in text_string_to_metric_families(text)}


@pytest.fixture
def populated(telemetry: Telemetry) -> None:
    """Demo traffic through the recording helpers of the test's telemetry (the one
    ``client`` serves), so every family has samples."""
    traffic = DemoTraffic(Settings(demo_rate=500), telemetry)
    traffic.tick(1.0)


def test_catalogue_is_the_spec_table() -> None:
    assert set(FAMILIES_BY_NAME) == set(SPEC_FAMILIES) | SELF_FAMILIES
    for name, (labels, categories) in SPEC_FAMILIES.items():
        family = FAMILIES_BY_NAME[name]
        assert set(family.label_names) == set(labels), name
        assert {c.value for c in family.categories} == categories, name


def test_no_family_has_an_unbounded_label() -> None:
    for family in FAMILIES:
        assert not FORBIDDEN_LABELS & set(family.label_names), family.name


def test_every_family_is_in_all_and_metrics(client: TestClient, populated: None) -> None:
    for path in ("/metrics", "/prometheus/metrics/all"):
        names = exposed_families(client.get(path).text)
        assert set(FAMILIES_BY_NAME) <= names, path


@pytest.mark.parametrize("category", list(Category))
def test_category_endpoint_has_exactly_its_families(
    client: TestClient, populated: None, category: Category
) -> None:
    names = exposed_families(client.get(f"/prometheus/metrics/{category.value}").text)
    catalogued = names & set(FAMILIES_BY_NAME)
    expected = {f.name for f in FAMILIES if category in f.categories}
    assert catalogued == expected
    runtime = {n for n in names - catalogued if n.startswith(("process_", "python_"))}
    assert bool(runtime) == (category is Category.SYSTEM)
    assert names - catalogued - runtime == set()


def test_unknown_category_is_404(client: TestClient) -> None:
    assert client.get("/prometheus/metrics/billing").status_code == 404


ENDPOINTS = ["/metrics", "/prometheus/metrics/all"] + [f"/prometheus/metrics/{c.value}" for c in Category]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_endpoint_passes_promtool_check_metrics(client: TestClient, populated: None, path: str) -> None:
    response = client.get(path)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    result = promtool_check_metrics(response.text)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ENDPOINTS)
def test_endpoint_parses_back_in_both_formats(client: TestClient, populated: None, path: str) -> None:
    text = client.get(path).text
    assert list(text_string_to_metric_families(text))
    openmetrics = client.get(path, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert list(parse_openmetrics(openmetrics.text))


def test_metric_output_never_contains_user_or_key(client: TestClient, populated: None) -> None:
    text = client.get("/metrics").text
    assert "user_0" not in text
    assert "sk-demo" not in text
