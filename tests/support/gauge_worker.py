"""A worker process that records what a test tells it to, into ``PROMETHEUS_MULTIPROC_DIR``.

It builds one ``Telemetry`` (the worker's own, as each uvicorn worker does) and reads one
JSON command per line on stdin, answering one JSON line on stdout once the command has
been applied (so a test orders writes across workers by waiting for each answer):

    {"op": "set", "helper": "set_queue_size", "args": ["jobs", 5]}     -> {"ok": true}
    {"op": "calls", "provider": "alpha", "status": 503, "count": 10}   -> {"ok": true}
    {"op": "publish", "provider": "alpha"}   -> the provider's health as this worker sees it

``publish`` writes the worker's computed gauges into its files, as the publisher thread of
a running app does every second. The thread is not started here (nor is the sharing of
outcomes between workers), so each worker's health tracker sees its own calls only and
the test decides when each worker's view reaches the files.

    PROMETHEUS_MULTIPROC_DIR=/tmp/d python -m tests.support.gauge_worker
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    from app.catalogue import CIRCUIT_STATE_VALUES
    from app.settings import Settings
    from app.telemetry import Telemetry

    telemetry = Telemetry(Settings(access_log=False))
    if telemetry.publisher is None:
        raise SystemExit("not in multiprocess mode: set PROMETHEUS_MULTIPROC_DIR")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command: dict[str, Any] = json.loads(line)
        answer: dict[str, Any] = {"ok": True}
        if command["op"] == "set":
            getattr(telemetry, command["helper"])(*command["args"])
        elif command["op"] == "calls":
            for _ in range(command["count"]):
                telemetry.record_upstream_call(command["provider"], "m1", duration_s=0.1,
                                               status_code=command["status"])
        elif command["op"] == "publish":
            telemetry.publisher.publish()
            health = telemetry.tracker.status(command["provider"])
            answer.update(score=health.score, availability=health.availability, error_rate=health.error_rate,
                          circuit=CIRCUIT_STATE_VALUES[str(health.circuit)])
        else:
            answer = {"ok": False, "error": f"unknown op {command['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
