"""The composite health score and Apdex, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable


def health_score(
    availability: float,
    error_rate: float,
    latency_score: float,
    weights: tuple[float, float, float] = (0.4, 0.3, 0.3),
) -> float:
    """``w0 * availability + w1 * (1 - error_rate) + w2 * latency_score``, in [0, 1].

    Each component is clamped to [0, 1] first, so a bad input cannot push the score out.
    """
    a, e, latency = (min(1.0, max(0.0, value)) for value in (availability, error_rate, latency_score))
    score = weights[0] * a + weights[1] * (1.0 - e) + weights[2] * latency
    return min(1.0, max(0.0, score))


def apdex(durations_s: Iterable[float], threshold_s: float) -> float:
    """Apdex: (satisfied + tolerating / 2) / total; satisfied <= T < tolerating <= 4T.

    1.0 for no samples. A failed call is passed as ``inf``: frustrated, as Apdex counts
    errors.
    """
    satisfied = tolerating = total = 0
    for duration in durations_s:
        total += 1
        if duration <= threshold_s:
            satisfied += 1
        elif duration <= 4 * threshold_s:
            tolerating += 1
    if total == 0:
        return 1.0
    return (satisfied + tolerating / 2) / total


def apdex_zone(duration_s: float, threshold_s: float) -> str:
    """satisfied, tolerating or frustrated."""
    if duration_s <= threshold_s:
        return "satisfied"
    if duration_s <= 4 * threshold_s:
        return "tolerating"
    return "frustrated"
