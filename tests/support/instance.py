"""One gateway-metrics instance of a test fleet, in a process of its own.

It records a fixed recipe of gateway traffic through the public helpers (so the fleet's
totals are known exactly), then serves ``create_app()`` with uvicorn; settings come from
the ``GATEWAY_METRICS_*`` environment, as in production.

    python -m tests.support.instance --port 8101 --index 0
"""

from __future__ import annotations

import argparse
import threading

import uvicorn

#: Upstream calls per provider recorded by instance ``i``: CALLS * (i + 1).
CALLS = 100
PROVIDERS = ("alpha", "beta")
#: Every tenth call of provider beta fails with a 503.
FAILURE_EVERY = 10


def expected_calls(instances: int, provider: str) -> int:
    return sum(CALLS * (index + 1) for index in range(instances))


def record_recipe(index: int) -> None:
    from app import metrics

    for provider in PROVIDERS:
        for n in range(CALLS * (index + 1)):
            failed = provider == "beta" and n % FAILURE_EVERY == 0
            metrics.record_upstream_call(
                provider, "m1", duration_s=0.3 if provider == "alpha" else 1.5,
                status_code=503 if failed else None,
            )
            if not failed:
                metrics.record_tokens_used(provider, "m1", 100, 40)
                metrics.record_credits_used(provider, "m1", f"user-{index}", 0.5)
    metrics.set_active_api_keys("active", 42)  # shared business state: every replica says 42


def steady_traffic(stop: threading.Event, per_second: int = 40) -> None:
    """The recipe's mix, forever: alpha always fine at 0.3 s; beta at 1.5 s with every
    tenth call a 503. Expected health: alpha 1.0; beta 0.4 * 0.9 + 0.3 * 0.9 + 0.3 * 0.9."""
    from app import metrics

    n = 0
    while not stop.wait(1.0 / per_second):
        n += 1
        metrics.record_upstream_call("alpha", "m1", duration_s=0.3)
        metrics.record_upstream_call("beta", "m1", duration_s=1.5,
                                     status_code=503 if n % FAILURE_EVERY == 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--steady", action="store_true", help="keep recording the mix while serving")
    args = parser.parse_args()
    from app.main import create_app

    app = create_app()
    record_recipe(args.index)
    if args.steady:
        threading.Thread(target=steady_traffic, args=(threading.Event(),), daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
