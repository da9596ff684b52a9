"""Provider health scores, circuit breakers and failover for the routing engine.

    from app.metrics import track_model_inference
    from app.scoring import get_tracker

    tracker = get_tracker()
    choice = tracker.choose(["openrouter", "anthropic", "cerebras"])
    for provider in choice.order:
        if permit := tracker.allow(provider):
            with track_model_inference(provider, model, permit=permit):
                ...  # call it; the helper hands the permit back with the outcome
            break
"""

from __future__ import annotations

from app.scoring.breaker import Circuit, Permit
from app.scoring.config import HealthConfig
from app.scoring.outcome import Outcome, classify, parse_duration, retry_hint
from app.scoring.probes import ProbeRunner
from app.scoring.score import apdex, apdex_zone, health_score
from app.scoring.tracker import Choice, HealthTracker, ProviderHealth, State

__all__ = [
    "Choice",
    "Circuit",
    "HealthConfig",
    "HealthTracker",
    "Outcome",
    "Permit",
    "ProbeRunner",
    "ProviderHealth",
    "State",
    "apdex",
    "apdex_zone",
    "classify",
    "get_tracker",
    "health_score",
    "parse_duration",
    "retry_hint",
]


def get_tracker() -> HealthTracker:
    """The tracker of the process's default telemetry, the one ``app.metrics`` feeds
    (an app with a ``Telemetry`` of its own reads ``telemetry.tracker``)."""
    from app.telemetry import default  # app.telemetry builds on this package

    return default().tracker
