"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import METRICS
from app.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(access_log=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample of the process registry (0 when absent)."""
    return METRICS.all_registry.get_sample_value(name, labels or {}) or 0.0


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
