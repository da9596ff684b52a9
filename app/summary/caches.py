"""Caches that requests fill, bounded in bytes as well as in entries.

    answers = bounded(TTLCache, max_entries=256, max_bytes=16 * 2**20, nbytes=len, ttl=10.0)
    keep(answers, key, body)   # False, and nothing kept, for a value bigger than the whole budget
    answers.currsize           # bytes charged, never above max_bytes

An entry count alone does not bound memory: a summary of 1,000 models is a thousand
times the JSON of a summary of one, and every distinct ``window_seconds`` is a new key.
Each entry is charged its size (``nbytes``, computed once when it is stored), but at
least an equal share of the budget (``max_bytes // max_entries``), so the one byte bound
caps the entry count too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from cachetools import Cache

C = TypeVar("C", bound=Cache)  # type: ignore[type-arg]


def bounded(kind: type[C], *, max_entries: int, max_bytes: int, nbytes: Callable[[Any], int],
            **options: Any) -> C:
    """A ``kind`` cache (LRUCache, TTLCache with its ``ttl``, ...) holding at most
    ``max_entries`` values and ``max_bytes`` of them as ``nbytes`` counts."""
    if max_entries < 1 or max_bytes < max_entries:
        raise ValueError("a cache needs max_entries >= 1 and max_bytes >= max_entries")
    share = max_bytes // max_entries
    return kind(max_bytes, getsizeof=lambda value: max(nbytes(value), share), **options)


def keep(cache: Cache, key: Hashable, value: Any) -> bool:  # type: ignore[type-arg]
    """Store ``value`` unless it alone is over the cache's budget: it is then served
    once and not kept (where cachetools would raise), and an older value under ``key``
    goes too. Whether it was kept."""
    try:
        cache[key] = value
    except ValueError:  # cachetools: "value too large"
        cache.pop(key, None)
        return False
    return True
