"""The bearer-token check takes the same time wherever a wrong token differs from the key.

Runs the app's own check (``app.dependencies.require_api_key``) on tokens of the key's
length that differ from it at the first byte, the middle byte, the last byte, on the key
itself (which is let in: no exception to raise, so faster), and on tokens of other
lengths, interleaved in one run (so machine load hits them
all alike), and prints the median time of each and its ratio to "first byte differs".
The tests assert the design (``hmac.compare_digest`` on two ``bytes``); this measures it.
``compare_digest`` reveals lengths, not contents: the other-length rows may differ.

    .venv/bin/python benchmarks/auth_timing.py [--rounds 200000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from fastapi import HTTPException
from starlette.requests import Request

from app.dependencies import require_api_key
from app.settings import Settings

KEY = "k" * 32 + "-0123456789abcdef0123456789abcdef"


def _request(authorization: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/metrics",
                    "headers": [(b"authorization", authorization)]})


def _check(request: Request, settings: Settings) -> bool:
    """Run the async check to its end (it never awaits): True when it lets the request in."""
    coroutine = require_api_key(request, settings)
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    except HTTPException:
        return False
    raise AssertionError("require_api_key awaited something")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()

    settings = Settings(api_key=KEY, access_log=False)
    key = KEY.encode()
    middle = len(key) // 2
    cases: dict[str, Any] = {
        "first byte differs": b"X" + key[1:],
        "middle byte differs": key[:middle] + b"X" + key[middle + 1 :],
        "last byte differs": key[:-1] + b"X",
        "the key": key,
        "non-ASCII, same length": "é".encode() + key[2:],
        "one byte short": key[:-1],
        "100 KB": b"A" * 100 * 1024,
    }
    requests = list((name, _request(b"Bearer " + token)) for name, token in cases.items())
    times: dict[str, list[int]] = {name: [] for name in cases}
    rng = random.Random(0)
    for _ in range(args.rounds):
        # A new order each round: a call is slower after the 100 KB one (cold caches), and
        # that must not fall on the same case every time.
        rng.shuffle(requests)
        for name, request in requests:
            started = time.perf_counter_ns()
            _check(request, settings)
            times[name].append(time.perf_counter_ns() - started)

    base = statistics.median(times["first byte differs"])
    print(f"{'token':<26}{'median ns':>12}{'ratio':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<26}{median:>12.0f}{median / base:>8.3f}")


if __name__ == "__main__":
    main()
