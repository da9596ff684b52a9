"""GET /prometheus/metrics/summary in local mode (the Prometheus source: tests/integration)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app import metrics
from app.catalogue import Category
from app.settings import Settings
from app.summary.service import SummaryService
from app.summary.snapshots import Snapshots
from app.telemetry import Telemetry
from app.topn import key_fingerprint


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(telemetry: Telemetry) -> tuple[SummaryService, Clock]:
    # ``telemetry`` is the default one: the helpers of app.metrics record into it.
    clock = Clock()
    snapshots = Snapshots(telemetry.metrics.all_registry, clock=clock)
    summary_service = SummaryService(Settings(), snapshots, tracker=telemetry.tracker,
                                     top_lists=telemetry.top_lists)
    return summary_service, clock


def test_unknown_category_is_422_naming_the_allowed_ones(client: TestClient) -> None:
    response = client.get("/prometheus/metrics/summary", params={"category": "billing"})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    for category in Category:
        assert category.value in message


@pytest.mark.parametrize("window", [0, 9, 3601, "abc", -5])
def test_bad_window_is_422(client: TestClient, window: object) -> None:
    assert client.get("/prometheus/metrics/summary", params={"window_seconds": window}).status_code == 422


def test_category_may_repeat_and_none_means_all(client: TestClient) -> None:
    some = client.get("/prometheus/metrics/summary", params=[("category", "models"), ("category", "business"),
                                                              ("category", "models")]).json()
    assert {name for name, value in some["metrics"].items() if value is not None} == {"models", "business"}
    every = client.get("/prometheus/metrics/summary").json()
    assert all(every["metrics"][category.value] is not None for category in Category)
    assert every["source"] == "local" and every["stale"] is False and every["errors"] == []
    assert every["window_seconds"] == 300


def test_summary_is_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    response = schema["paths"]["/prometheus/metrics/summary"]["get"]["responses"]["200"]
    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Summary")
    for model in ("ProvidersSummary", "ModelsSummary", "BusinessSummary", "PerformanceSummary", "SystemSummary"):
        assert model in schema["components"]["schemas"]


def test_local_rates_are_over_the_window(service: tuple[SummaryService, Clock]) -> None:
    summary_service, clock = service
    summary_service.snapshots.take()
    for n in range(300):
        metrics.record_upstream_call("sum-rates", "m1", duration_s=0.4, status_code=500 if n % 10 == 0 else None)
    metrics.record_tokens_used("sum-rates", "m1", 1000, 250)
    clock.now = 100.0
    summary = summary_service.summary([Category.PROVIDERS, Category.MODELS], window_s=100)
    provider = next(p for p in summary.metrics.providers.providers if p.provider == "sum-rates")
    assert provider.requests_per_second == pytest.approx(3.0)
    assert provider.error_rate == pytest.approx(0.1)
    assert provider.avg_response_time_ms == pytest.approx(400.0)
    model = next(m for m in summary.metrics.models.models if m.provider == "sum-rates")
    assert model.requests_total == 300
    assert 250 <= model.p50_ms <= 500  # inside the (0.25, 0.5] bucket, interpolated
    assert model.token_efficiency == pytest.approx(0.25)


def test_time_per_output_token_percentiles_and_pace(service: tuple[SummaryService, Clock]) -> None:
    """Per model and overall, from the successful streamed calls only; the pace is 1 / the
    mean time per output token, each call counting once."""
    summary_service, clock = service
    summary_service.snapshots.take()
    for _ in range(100):  # (2.5 - 0.5) / 40 = 50 ms and (1.5 - 0.5) / 40 = 25 ms per token
        metrics.record_upstream_call("sum-tpot", "m1", duration_s=2.5, ttft_s=0.5, input_tokens=10, output_tokens=41)
        metrics.record_upstream_call("sum-tpot", "m1", duration_s=1.5, ttft_s=0.5, input_tokens=10, output_tokens=41)
        # Not streamed, failed, or a single token: no time per output token.
        metrics.record_upstream_call("sum-tpot", "m1", duration_s=9.0, input_tokens=10, output_tokens=41)
        metrics.record_upstream_call("sum-tpot", "m1", duration_s=9.0, ttft_s=0.5, status_code=500)
        metrics.record_upstream_call("sum-tpot", "m1", duration_s=9.0, ttft_s=0.5, output_tokens=1)
        metrics.record_upstream_call("sum-tpot", "batch", duration_s=0.4, input_tokens=10, output_tokens=41)
    clock.now = 100.0
    summary = summary_service.summary([Category.MODELS, Category.PERFORMANCE], window_s=100)
    by_model = {m.model: m for m in summary.metrics.models.models if m.provider == "sum-tpot"}
    model = by_model["m1"]
    # Half the calls at 25 ms, in (20, 30]: p50 is the top of that bucket; p95 interpolates in (30, 50].
    assert model.tpot_p50_ms == pytest.approx(30.0)
    assert model.tpot_p95_ms == pytest.approx(48.0)
    assert model.output_tokens_per_second == pytest.approx(1 / 0.0375)
    batch = by_model["batch"]
    assert (batch.tpot_p50_ms, batch.tpot_p95_ms, batch.output_tokens_per_second) == (None, None, None)
    assert summary.metrics.performance.tpot_p95_ms == pytest.approx(48.0)


def test_window_without_traffic_gives_null_not_zero(service: tuple[SummaryService, Clock]) -> None:
    summary_service, clock = service
    metrics.record_upstream_call("sum-idle", "m1", duration_s=0.4)
    summary_service.snapshots.take()
    clock.now = 400.0
    summary = summary_service.summary([Category.PROVIDERS, Category.MODELS], window_s=300)
    model = next(m for m in summary.metrics.models.models if m.provider == "sum-idle")
    assert model.requests_per_second == 0.0
    assert model.error_rate is None
    assert model.p95_ms is None
    assert model.tpot_p95_ms is None and model.output_tokens_per_second is None


def test_error_rates_follow_the_outcome_taxonomy(service: tuple[SummaryService, Clock]) -> None:
    summary_service, clock = service
    summary_service.snapshots.take()
    for status in (200,) * 4 + (429,) * 5 + (400,):
        metrics.record_upstream_call("sum-taxonomy", "m1", duration_s=0.1, status_code=status)
        metrics.record_http_request("POST", "/v1/taxonomy", status, 0.1)
    metrics.record_http_request("POST", "/v1/taxonomy", 500, 0.1)
    clock.now = 100.0
    summary = summary_service.summary([Category.PROVIDERS, Category.MODELS, Category.PERFORMANCE], window_s=100)
    provider = next(p for p in summary.metrics.providers.providers if p.provider == "sum-taxonomy")
    model = next(m for m in summary.metrics.models.models if m.provider == "sum-taxonomy")
    for figures in (provider, model):  # 429 and 400 are no errors; they have shares of their own
        assert (figures.error_rate, figures.throttled_share, figures.client_error_share) == pytest.approx((0, 0.5, 0.1))
    # The gateway's own responses are classed alike: one 500 over the six scored (not the 429s).
    assert summary.metrics.performance.error_rate == pytest.approx(1 / 6)


def test_business_top_lists_are_bounded_and_keys_fingerprinted(client: TestClient) -> None:
    for n in range(50):  # the client's telemetry is the default one: the helpers record into it
        metrics.record_credits_used("p", "m", f"whale-{n}", 10.0 * (n + 1), api_key=f"sk-live-{n}")
    business = client.get("/prometheus/metrics/summary", params={"category": "business"}).json()["metrics"]["business"]
    assert len(business["top_users_by_credits"]) == Settings().top_n
    assert business["top_users_by_credits"][0]["key"] == "whale-49"
    assert [hit["key"] for hit in business["top_users_by_credits"]] == [
        f"whale-{n}" for n in range(49, 49 - Settings().top_n, -1)]
    assert business["top_api_keys_by_credits"][0]["key"] == key_fingerprint("sk-live-49")
    assert "sk-live" not in str(business)

