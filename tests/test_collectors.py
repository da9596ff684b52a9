"""Families computed at scrape time: the provider health gauges obey the label cap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.scoring import HealthTracker, get_tracker
from app.settings import Settings
from app.telemetry import Telemetry
from tests.scoring.fake_clock import FakeClock

GAUGES = ("gatewayz_provider_health_score", "provider_availability", "provider_error_rate",
          "gatewayz_provider_circuit_state")


@pytest.fixture
def capped() -> Iterator[tuple[TestClient, HealthTracker, Telemetry]]:
    clock = FakeClock()
    tracker = HealthTracker(clock=clock, wall_clock=clock.wall)
    settings = Settings(access_log=False, label_cap=10)
    telemetry = Telemetry(settings, tracker=tracker)
    with TestClient(create_app(settings, telemetry)) as client:
        yield client, telemetry.tracker, telemetry


def series(client: TestClient) -> dict[str, set[str]]:
    text = client.get("/metrics").text
    found: dict[str, set[str]] = {name: set() for name in GAUGES}
    for family in text_string_to_metric_families(text):
        for metric_sample in family.samples:
            if metric_sample.name in found:
                found[metric_sample.name].add(metric_sample.labels["provider"])
    return found


def test_questions_about_unknown_providers_create_no_series(
    capped: tuple[TestClient, HealthTracker, Telemetry]
) -> None:
    client, tracker, telemetry = capped
    tracker.record("known", duration_s=0.3)
    for index in range(2_000):
        name = f"unknown-{index}"
        tracker.choose([name, "known"])
        tracker.status(name)
        tracker.allow(name)

    assert series(client) == {name: {"known"} for name in GAUGES}


def test_recorded_providers_beyond_the_cap_are_counted_not_exported(
    capped: tuple[TestClient, HealthTracker, Telemetry]
) -> None:
    client, tracker, telemetry = capped
    labels = {"metric": "gatewayz_provider_health_score", "label": "provider"}
    for index in range(25):
        tracker.record(f"provider-{index:02d}", duration_s=0.3)

    first = series(client)
    second = series(client)  # a second scrape does not count the same providers twice

    assert first == second == {name: {f"provider-{index:02d}" for index in range(10)} for name in GAUGES}
    overflow = telemetry.metrics.all_registry.get_sample_value("gatewayz_label_overflow_total", labels)
    assert overflow == 15


def test_a_providers_transition_counters_exist_at_zero_before_its_first_trip(
    client: TestClient, telemetry: Telemetry
) -> None:
    assert get_tracker() is telemetry.tracker
    get_tracker().record("fresh-provider", duration_s=0.3)

    client.get("/metrics")

    for state in ("closed", "open", "half_open"):
        labels = {"provider": "fresh-provider", "to_state": state}
        transitions = telemetry.metrics.all_registry.get_sample_value(
            "gatewayz_provider_circuit_transitions_total", labels)
        assert transitions == 0.0
