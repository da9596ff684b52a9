"""A cardinality attack: endless random model names, paths and methods leave the series
count bounded (the label caps and templated routes), and the overflow is counted."""

from __future__ import annotations

import asyncio
import random
import string
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry

MODELS = 100_000
REQUESTS = 5_000


def _random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-./%", k=length))


async def _send(app: Any, method: str, path: str) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode("latin-1", "replace"),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"attacker")],
             "client": ("127.0.0.1", 1), "server": ("gateway", 80)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


def test_random_models_paths_and_methods_leave_series_bounded(
    settings: Settings, telemetry: Telemetry
) -> None:
    # ``telemetry`` starts empty (counts are checked exactly) and is the default one: the
    # helpers of app.metrics record into it.
    rng = random.Random(14)
    for _ in range(MODELS):
        metrics.record_tokens_used("openai", _random_text(rng, 24), 10, 20)
    app = create_app(settings, telemetry)

    async def attack() -> None:
        for _ in range(REQUESTS):
            method = rng.choice(["GET", "POST", "PURGE", _random_text(rng, 8).upper()])
            await _send(app, method, "/" + _random_text(rng, rng.randint(1, 60)))

    asyncio.run(attack())
    families = {family.name: family for family in
                text_string_to_metric_families(generate_latest(telemetry.metrics.all_registry).decode())}
    models = {sample.labels["model"] for sample in families["tokens_used"].samples}
    assert len(models) == settings.label_cap + 1  # the cap, and "other"
    assert "other" in models
    endpoints = {sample.labels["endpoint"] for sample in families["http_requests"].samples}
    assert endpoints == {"unmatched"}  # raw paths never become labels
    methods = {sample.labels["method"] for sample in families["http_requests"].samples}
    assert methods <= {"GET", "POST", "OTHER"}
    assert sum(s.value for s in families["http_requests"].samples) == REQUESTS
    overflow = {(s.labels["metric"], s.labels["label"]): s.value
                for s in families["gatewayz_label_overflow"].samples}
    # Every model past the cap is counted, once per series it folded (input and output tokens).
    assert overflow[("tokens_used_total", "model")] == 2 * (MODELS - settings.label_cap)
