"""The console script, the internal metrics port app, and the Dockerfile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.cli import parse_args
from app.routers.metrics import scrape_only_app
from app.settings import Settings
from app.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent


def test_console_script_answers_help() -> None:
    script = Path(sys.executable).with_name("gateway-metrics")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--demo" in result.stdout


def test_flags_override_settings() -> None:
    args = parse_args(["--demo", "--port", "9100"])
    assert args.demo is True and args.port == 9100
    assert parse_args([]).demo is None  # unset flags leave the environment's value


def test_internal_port_app_serves_metrics_and_nothing_public() -> None:
    settings = Settings(access_log=False)
    client = TestClient(scrape_only_app(settings, Telemetry(settings).metrics))
    assert client.get("/metrics").status_code == 200
    assert client.get("/prometheus/metrics/models").status_code == 200
    assert client.get("/docs").status_code == 404


def test_dockerfile_runs_the_entry_point_as_non_root_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "\nUSER 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert 'CMD ["gateway-metrics"]' in dockerfile


def test_embedding_as_the_readme_shows() -> None:
    from fastapi import FastAPI

    from app import metrics
    from app.middleware import MetricsMiddleware
    from app.routers import health
    from app.routers import metrics as metrics_routes

    gateway = FastAPI()
    gateway.state.settings = Settings(access_log=False)
    gateway.include_router(metrics_routes.router)
    gateway.include_router(health.router)
    gateway.add_middleware(MetricsMiddleware, access_log=False)

    @gateway.post("/v1/chat/completions")
    def chat() -> dict[str, str]:
        with metrics.track_model_inference("embedded-provider", "gpt-4o") as call:
            call.status_code = 200
        metrics.record_tokens_used("embedded-provider", "gpt-4o", 10, 5)
        return {"ok": "yes"}

    client = TestClient(gateway)
    assert client.post("/v1/chat/completions").status_code == 200
    scrape = client.get("/prometheus/metrics/models").text
    assert 'model_inference_requests_total{model="gpt-4o",provider="embedded-provider",status="success"}' in scrape
    assert client.get("/ready").json()["backend"]["configured"] is False
