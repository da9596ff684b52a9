"""Request ids: the client's own when it is a safe token, a fresh one otherwise.

A fresh id is a per-process random prefix plus a counter: unique across processes and
restarts, and far cheaper than ``uuid4()``, which reads the OS's random source for every
id (``benchmarks/hot_path.py`` measures both). Ids are made
a thousand at a time, so a request only pops one from a list. Request ids correlate
logs; they are not secrets, so being sequential is harmless.
"""

from __future__ import annotations

import itertools
import os
import re

#: Letters, digits and ``._-``, at most 128 characters: safe to echo in a header and a log.
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
HEADER = b"x-request-id"

_prefix = os.urandom(6).hex()
_counter = itertools.count(1)
_BATCH = 1024
_ready: list[str] = []


def new_request_id() -> str:
    try:
        return _ready.pop()
    except IndexError:
        return _refill()


def _refill() -> str:
    # Made in reverse so pop() hands them out in increasing order.
    start = next(_counter) * _BATCH
    fresh = [f"{_prefix}{n:010x}" for n in range(start + _BATCH - 1, start - 1, -1)]
    _ready.extend(fresh[:-1])
    return fresh[-1]


def safe_request_id(value: bytes) -> str | None:
    """``value`` of an ``X-Request-ID`` header if it is a safe token, else None."""
    if len(value) <= 128:
        text = value.decode("latin-1")
        if _SAFE_ID.fullmatch(text):
            return text
    return None
