"""Fixtures of the scoring tests: a fake clock and a tracker that runs on it."""

from __future__ import annotations

import pytest

from app.scoring import HealthTracker
from tests.scoring.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> HealthTracker:
    return HealthTracker(clock=clock, wall_clock=clock.wall)
