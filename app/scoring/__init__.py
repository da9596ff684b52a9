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

import threading

from app.scoring.breaker import Circuit, Permit
from app.scoring.config import HealthConfig
from app.scoring.outcome import Outcome, classify, parse_duration, retry_hint
from app.scoring.probes import ProbeRunner
from app.scoring.score import apdex, apdex_zone, health_score
from app.scoring.tracker import Choice, HealthTracker, ProviderHealth, State, add_transition_listener

__all__ = [
    "Choice",
    "Circuit",
    "HealthConfig",
    "HealthTracker",
    "Outcome",
    "Permit",
    "add_transition_listener",
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
    "set_tracker",
]

_tracker: HealthTracker | None = None
_lock = threading.Lock()


def get_tracker() -> HealthTracker:
    """The process's tracker, the one the recording helpers feed."""
    global _tracker
    if _tracker is None:
        with _lock:
            if _tracker is None:
                _tracker = HealthTracker()
    return _tracker


def set_tracker(tracker: HealthTracker) -> None:
    """Replace the process's tracker (the app factory, tests, benchmarks)."""
    global _tracker
    _tracker = tracker
