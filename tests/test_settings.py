"""Settings: the environment, validation, and the README's quick start.

That docs/SETTINGS.md documents every variable with its default is tests/test_docs.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_METRICS_LABEL_CAP", "42")
    monkeypatch.setenv("GATEWAY_METRICS_ACCESS_LOG", "false")
    monkeypatch.setenv("GATEWAY_METRICS_HEALTH_WEIGHTS", "0.5,0.25,0.25")
    monkeypatch.setenv("GATEWAY_METRICS_PROBE_URLS", "openai=http://127.0.0.1:9/health, anthropic=http://127.0.0.1:9/x")
    settings = Settings()
    assert settings.label_cap == 42
    assert settings.access_log is False
    assert settings.health_weights == (0.5, 0.25, 0.25)
    assert settings.probe_urls == {"openai": "http://127.0.0.1:9/health", "anthropic": "http://127.0.0.1:9/x"}


@pytest.mark.parametrize("weights", ["0.5,0.5,0.5", "1,0,-0.0001", "0.4,0.3"])
def test_weights_must_sum_to_one(monkeypatch: pytest.MonkeyPatch, weights: str) -> None:
    monkeypatch.setenv("GATEWAY_METRICS_HEALTH_WEIGHTS", weights)
    with pytest.raises(ValidationError):
        Settings()


def test_api_key_is_not_printed() -> None:
    assert "hunter2" not in repr(Settings(api_key="hunter2"))
