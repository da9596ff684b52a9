"""Simulated time for the scoring tests: incidents replay without sleeping."""

from __future__ import annotations

WALL_START = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, so reasons read "22:13:20"


class FakeClock:
    """``now`` moves only when a test advances it; the wall clock follows."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._offset = WALL_START - start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._offset

    def advance(self, seconds: float) -> None:
        self.now += seconds
