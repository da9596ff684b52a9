"""The local summary's figures against a window computed by hand.

The oracle shares no code with app/summary: the expected percentiles come from
Prometheus' documented histogram_quantile rule (linear interpolation inside the bucket
that holds the rank; the lower bound of the first bucket is 0; a rank in +Inf gives the
highest finite bound) applied to bucket counts worked out below from the durations
recorded, and the rates from the calls counted by hand. Traffic recorded before the
window must not show in any windowed figure.
"""

from __future__ import annotations

import pytest

from app.catalogue import INFERENCE_BUCKETS, Category
from app.settings import Settings
from app.summary.service import SummaryService
from app.summary.snapshots import Snapshots
from app.telemetry import Telemetry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def histogram_quantile(q: float, durations: list[float], bounds: tuple[float, ...]) -> float:
    """Prometheus' histogram_quantile over the buckets ``durations`` fall in."""
    cumulative = [sum(1 for d in durations if d <= bound) for bound in bounds]
    rank = q * len(durations)
    for index, count in enumerate(cumulative):
        if count >= rank:
            lower = bounds[index - 1] if index else 0.0
            below = cumulative[index - 1] if index else 0
            return lower + (bounds[index] - lower) * (rank - below) / (count - below)
    return bounds[-1]


#: Before the window: fast and all fine. In it: (duration, status) of each call.
BEFORE = [(0.05, 200)] * 100
WINDOW = [(0.3, 200)] * 30 + [(0.7, 200)] * 10 + [(1.5, 500)] * 8 + [(3.0, 503)] * 2


def test_figures_are_those_of_the_window_alone(telemetry: Telemetry) -> None:
    clock = Clock()
    snapshots = Snapshots(telemetry.metrics.all_registry, clock=clock)
    service = SummaryService(Settings(), snapshots, tracker=telemetry.tracker, top_lists=telemetry.top_lists)
    snapshots.take()
    for duration, status in BEFORE:
        telemetry.record_upstream_call("oracle", "m", duration_s=duration, status_code=status)
    clock.now = 50.0
    snapshots.take()  # the window's baseline: 100 s before the summary
    for duration, status in WINDOW:
        telemetry.record_upstream_call("oracle", "m", duration_s=duration, status_code=status)
    telemetry.record_tokens_used("oracle", "m", 1000, 400)
    clock.now = 150.0
    summary = service.summary([Category.MODELS], window_s=100)
    model = next(m for m in summary.metrics.models.models if (m.provider, m.model) == ("oracle", "m"))
    durations = [duration for duration, _ in WINDOW]
    failed = sum(1 for _, status in WINDOW if status >= 500)
    assert model.requests_total == len(BEFORE) + len(WINDOW)  # a total is the counter's value
    assert model.requests_per_second == pytest.approx(len(WINDOW) / 100)
    assert model.error_rate == pytest.approx(failed / len(WINDOW))
    # By hand: ranks 25, 47.5 and 49.5 of 50 fall in (0.25, 0.5], (1, 2] and (2, 4].
    assert histogram_quantile(0.5, durations, INFERENCE_BUCKETS) == pytest.approx(0.25 + 0.25 * 25 / 30)
    assert histogram_quantile(0.99, durations, INFERENCE_BUCKETS) == pytest.approx(3.5)
    for q, figure in ((0.5, model.p50_ms), (0.95, model.p95_ms), (0.99, model.p99_ms)):
        assert figure == pytest.approx(1000 * histogram_quantile(q, durations, INFERENCE_BUCKETS))
    assert model.token_efficiency == pytest.approx(0.4)
