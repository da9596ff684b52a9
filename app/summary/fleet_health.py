"""Fleet mode: the health score of SPEC section 5 computed from PromQL over all replicas,
so every replica of the gateway makes the same failover decision.

It reads the same outcomes the local tracker scores, as every replica exports them:
``model_inference_requests_total`` by status (whose labels follow the tracker's outcome
classes, app.scoring.outcome: the status sets below are derived from it) and ``gatewayz_provider_apdex_total`` by zone
(the tracker's own Apdex verdict per call), over the tracker's window, and the circuit
states. Probes are per replica and are not part of the fleet figure.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.scoring import HealthConfig, health_score
from app.summary.figures import HealthFigures
from app.summary.promql import (
    ERROR_STATUSES,
    FLEET_CALLS_RECORD,
    SCORED_STATUSES,
    UNREACHED_STATUSES,
    Query,
    current,
    rate,
)
from app.summary.quantiles import Result

FLEET_HEALTH_QUERIES: tuple[Query, ...] = (
    # Recorded for the tracker's default window (a minute): a rate of every instance's
    # per-model series, as dear as the summaries' own at fleet scale.
    rate("fleet_calls", "model_inference_requests_total", "provider", "status", recorded=FLEET_CALLS_RECORD),
    rate("fleet_apdex", "gatewayz_provider_apdex_total", "provider", "zone"),
    # Per replica (one series each, however many jobs scrape it): the fleet treats a
    # provider as open when any replica has it open (1).
    current("fleet_circuit", "gatewayz_provider_circuit_state", "provider", "instance"),
)


def fleet_health(results: Mapping[str, Result], config: HealthConfig) -> dict[str, HealthFigures]:
    calls: dict[str, dict[str, float]] = {}
    for (provider, status), value in results.get("fleet_calls", {}).items():
        calls.setdefault(provider, {})[status] = value
    zones: dict[str, dict[str, float]] = {}
    for (provider, zone), value in results.get("fleet_apdex", {}).items():
        zones.setdefault(provider, {})[zone] = value
    circuit: dict[str, bool] = {}
    for (provider, _instance), value in results.get("fleet_circuit", {}).items():
        circuit[provider] = circuit.get(provider, False) or value == 1.0
    figures: dict[str, HealthFigures] = {}
    for provider in sorted(set(calls) | set(circuit)):
        statuses = calls.get(provider, {})
        scored = sum(v for status, v in statuses.items() if status in SCORED_STATUSES)
        failed = sum(v for status, v in statuses.items() if status in ERROR_STATUSES)
        unreached = sum(v for status, v in statuses.items() if status in UNREACHED_STATUSES)
        is_open = circuit.get(provider, False)
        state_name = "open" if is_open else None
        if scored <= 0:
            figures[provider] = HealthFigures(score=1.0 if not is_open else None,
                                              state="unavailable" if is_open else "unknown",
                                              circuit=state_name)
            continue
        apdex = zones.get(provider, {})
        apdex_total = sum(apdex.values())
        latency = (apdex.get("satisfied", 0.0) + apdex.get("tolerating", 0.0) / 2) / apdex_total if apdex_total else 1.0
        availability = 0.0 if is_open else (scored - unreached) / scored
        score = health_score(availability, failed / scored, latency, config.weights)
        if is_open or score < config.degraded_score:
            state = "unavailable"
        elif score < config.healthy_score:
            state = "degraded"
        else:
            state = "healthy"
        figures[provider] = HealthFigures(score=round(score, 6), state=state, circuit=state_name,
                                          availability=round(availability, 6), error_rate=round(failed / scored, 6))
    return figures
