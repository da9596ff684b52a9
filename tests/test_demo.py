"""The demo traffic: every family gets samples, and the flaky provider cycles."""

from __future__ import annotations

import pytest

from app.catalogue import FAMILIES
from app.demo import FLAKY, DemoTraffic, flaky_phase
from app.settings import Settings
from app.telemetry import Telemetry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_flaky_provider_degrades_fails_and_recovers_over_a_cycle() -> None:
    phases = [flaky_phase(position / 100).name for position in range(100)]
    assert phases[0] == "healthy"
    assert "degraded" in phases and "down" in phases
    assert phases[-1] == "healthy"
    assert phases.index("degraded") < phases.index("down")


def test_demo_drives_every_recorded_family() -> None:
    clock = FakeClock()
    settings = Settings(demo_rate=400, demo_cycle_seconds=60)
    telemetry = Telemetry(settings)
    traffic = DemoTraffic(settings, telemetry, clock=clock)
    for _ in range(30):
        traffic.tick(1.0)
        clock.now += 2.0
    collected = {metric.name for metric in telemetry.metrics.all_registry.collect() if metric.samples}
    for family in FAMILIES:
        if family.name in ("http_requests_in_flight", "gatewayz_label_overflow_total",
                           "gatewayz_recording_rejected_total", "http_exceptions_total",
                           "gatewayz_health_sharing_errors_total"):
            continue  # only real requests, overflows, bad input and failed sharing produce these
        exposed = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        assert exposed in collected, family.name


def test_demo_streams_yield_time_per_output_token_at_each_providers_pace() -> None:
    """Streamed successful calls give (duration - ttft) / (output tokens - 1) = 1 / the
    profile's tokens per second, give or take the integer token count."""
    from app.demo import PROFILES

    clock = FakeClock()
    settings = Settings(demo_rate=400, demo_cycle_seconds=60)
    telemetry = Telemetry(settings)
    traffic = DemoTraffic(settings, telemetry, clock=clock)
    calls = 0
    for _ in range(10):
        calls += traffic.tick(1.0)
        clock.now += 1.0
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for metric in telemetry.metrics.all_registry.collect():
        if metric.name == "gatewayz_time_per_output_token_seconds":
            for sample in metric.samples:
                provider = sample.labels["provider"]
                if sample.name.endswith("_count"):
                    counts[provider] = counts.get(provider, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    sums[provider] = sums.get(provider, 0.0) + sample.value
    assert set(counts) == set(PROFILES)
    assert calls == 4000  # 400 calls/s for 10 s
    # 60% of calls are streamed; at most about 5% fail, are throttled or ask for a junk model
    # (1% junk, 1% errors, up to 3% rate limits), and only successes have a time per output
    # token: about 57% of the calls, within sampling noise (~1% on 4000 calls) of both bounds.
    assert 0.5 * calls <= sum(counts.values()) <= 0.6 * calls
    for provider, count in counts.items():
        assert 0 < count < 0.6 * calls, provider  # each provider takes its share, none takes all
        pace = count / sums[provider]  # 1 / mean time per output token
        assert pace == pytest.approx(PROFILES[provider].tokens_per_s, rel=0.05), provider


def test_tick_makes_the_configured_rate() -> None:
    settings = Settings(demo_rate=25)
    traffic = DemoTraffic(settings, Telemetry(settings), clock=FakeClock())
    assert sum(traffic.tick(0.1) for _ in range(40)) == 100


def test_flaky_provider_is_a_demo_provider() -> None:
    from app.demo import PROFILES

    assert FLAKY in PROFILES
    assert len(PROFILES) >= 4


def test_flaky_provider_moves_through_degraded_and_unavailable_and_back() -> None:
    from app.scoring import HealthTracker

    clock = FakeClock()
    settings = Settings(demo_rate=50, demo_cycle_seconds=240)
    telemetry = Telemetry(settings, tracker=HealthTracker(clock=clock))
    traffic = DemoTraffic(settings, telemetry, clock=clock)
    states = []
    for _ in range(2 * 240):  # two cycles, a second at a time
        traffic.tick(1.0)
        clock.now += 1.0
        states.append(telemetry.tracker.status(FLAKY).state.value)
    changes = [state for index, state in enumerate(states) if index == 0 or state != states[index - 1]]
    assert "degraded" in changes and "unavailable" in changes
    first_down = changes.index("unavailable")
    assert "healthy" in changes[first_down:]  # and it recovers
