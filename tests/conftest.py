"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app import telemetry as telemetry_module
from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry


@pytest.fixture(autouse=True)
def fresh_default_telemetry() -> Iterator[None]:
    """Every test starts with a process whose default telemetry is yet to be made: what
    one test records, no other test reads."""
    previous = telemetry_module.set_default(None)
    try:
        yield
    finally:
        telemetry_module.set_default(previous)


@pytest.fixture
def settings() -> Settings:
    return Settings(access_log=False)


@pytest.fixture
def telemetry(settings: Settings) -> Telemetry:
    """The test's own telemetry, made from ``settings``: the default one, so the helpers
    of ``app.metrics`` record into it too."""
    made = Telemetry(settings)
    telemetry_module.set_default(made)
    return made


@pytest.fixture
def client(settings: Settings, telemetry: Telemetry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, telemetry)) as test_client:
        yield test_client


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample of the default telemetry's registry (0 when absent)."""
    return telemetry_module.default().metrics.all_registry.get_sample_value(name, labels or {}) or 0.0


class LineCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(record.getMessage().split("\n"))


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """The access log lines written while the test runs (call flush_access_logs first)."""
    logger = logging.getLogger("gateway_metrics.access")
    handler = LineCollector()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/test.sh installs the Debian prometheus package")
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
