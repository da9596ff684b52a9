"""Answering a summary: from the Prometheus backend when one is configured and answers,
from this process's registry otherwise, never with an error status.

With a backend, the named queries run in parallel under one deadline (app.backend); a
query that fails there is answered from its last good value (``stale: true``) or, when
it never had one, from the local registry, and ``errors`` says which and why.
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.catalogue import Category
from app.promql import queries_for
from app.scoring import get_tracker
from app.settings import Settings
from app.snapshots import Snapshots
from app.summary import HealthFigures, build_metrics
from app.summary_models import Summary, SummaryError


def local_health() -> dict[str, HealthFigures]:
    """The providers' health from this process's tracker."""
    return {
        health.provider: HealthFigures(
            score=health.score,
            state=str(health.state),
            circuit=str(health.circuit),
            availability=health.availability,
        )
        for health in get_tracker().snapshot()
    }


class SummaryService:
    def __init__(self, settings: Settings, snapshots: Snapshots, backend: object | None = None) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.backend = backend

    def summary(self, categories: list[Category], window_s: int | None = None) -> Summary:
        self.snapshots.start()  # no-op once running; an embedding app may skip our lifespan
        window = int(window_s or self.settings.summary_window_seconds)
        queries = queries_for(categories)
        errors: list[SummaryError] = []
        results = self.snapshots.evaluate(queries, window)
        return Summary(
            timestamp=datetime.now(UTC),
            source="local",
            window_seconds=window,
            stale=False,
            errors=errors,
            metrics=build_metrics(categories, results, local_health(), self.settings.top_n),
        )
