"""Bounded heavy-hitter tables: the top users and API keys by credits, in fixed memory.

Per-user and per-key questions never become Prometheus series (unbounded cardinality);
they are answered from these tables by the JSON summary. A table keeps at most
``capacity`` keys in the manner of Space-Saving (Metwally, Agrawal, El Abbadi, 2005): when
the table holds twice its capacity it keeps the largest half, and a key that arrives
later starts from the largest value dropped so far (its possible over-estimate,
``error``). So any key whose true total exceeds that floor is in the table, and each
reported figure is off by at most its ``error``. Pruning in batches keeps ``add`` O(1)
amortized: it runs on the gateway's hot path.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible id for an API key, so keys never appear in clear."""
    digest = hashlib.blake2b(api_key.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return f"key_{digest}"


@dataclass(frozen=True, slots=True)
class HeavyHitter:
    key: str
    value: float
    #: Upper bound of how much of ``value`` may belong to keys evicted before this one.
    error: float


class SpaceSaving:
    """Approximate top-N by summed value, in ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._values: dict[str, list[float]] = {}  # key -> [value, error]
        self._floor = 0.0  # the largest value pruned so far
        self._lock = threading.Lock()

    def add(self, key: str, amount: float) -> None:
        with self._lock:
            entry = self._values.get(key)
            if entry is not None:
                entry[0] += amount
            else:
                self._values[key] = [self._floor + amount, self._floor]
                if len(self._values) >= 2 * self.capacity:
                    self._prune()

    def _prune(self) -> None:
        ranked = sorted(self._values.items(), key=lambda item: item[1][0], reverse=True)
        self._floor = max(self._floor, ranked[self.capacity][1][0])
        self._values = dict(ranked[: self.capacity])

    def top(self, n: int) -> list[HeavyHitter]:
        with self._lock:
            items = sorted(self._values.items(), key=lambda item: item[1][0], reverse=True)[:n]
        return [HeavyHitter(key, value, error) for key, (value, error) in items]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._floor = 0.0


#: Keys each table keeps at least: Space-Saving's estimates are exact for the keys well
#: inside its capacity, and the summaries show ``Settings.top_n`` (10 by default) of them.
TOP_N_CAPACITY = 500


class TopLists:
    """The summary's bounded top-N tables of one instrumented app."""

    __slots__ = ("users_by_credits", "keys_by_credits", "keys_by_requests")

    def __init__(self, capacity: int = TOP_N_CAPACITY) -> None:
        self.users_by_credits = SpaceSaving(capacity)
        self.keys_by_credits = SpaceSaving(capacity)
        self.keys_by_requests = SpaceSaving(capacity)
