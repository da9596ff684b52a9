"""deploy/prometheus: the configs and rules pass promtool, the promtool unit tests pass,
and they cover every rule: each recording rule's value, each alert firing at its time and
staying silent before it."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.catalogue import INFERENCE_STATUSES
from app.summary.promql import ERROR_STATUSES, SCORED_STATUSES
from tests.conftest import promtool
from tests.deploy.sources import PROMETHEUS_DIR, ROOT, RULE_FILES, rules

RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
SEVERITIES = {"critical", "warning", "info"}
#: level:metric:operations (Prometheus' naming practice for recording rules).
RECORD_NAME = re.compile(r"^[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def records() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


@functools.cache
def unit_tests() -> list[dict[str, Any]]:
    """Every test group, with its file's evaluation interval (in minutes) as "_step"."""
    groups = []
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        step = _duration_minutes(document.get("evaluation_interval", "1m"))
        groups.extend({**test, "_step": step} for test in document["tests"])
    return groups


@pytest.mark.parametrize("config", ["prometheus.yml", "examples/categories.yml"])
def test_promtool_check_config(config: str) -> None:
    result = run_promtool("check", "config", PROMETHEUS_DIR / config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in records():
        assert RECORD_NAME.match(rule["record"]), rule["record"]
        if "rate(" in rule["expr"]:
            assert "_total" not in rule["record"], "a rate of a counter drops _total"
        else:  # a sum of counters is still a counter's total
            assert "_total" not in rule["record"] or rule["record"].endswith("_total:sum"), rule["record"]


def test_every_recording_rule_has_a_value_test() -> None:
    tested = {case["expr"] for test in unit_tests() for case in test.get("promql_expr_test", [])
              if case.get("exp_samples")}
    assert {rule["record"] for rule in records()} <= tested


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_alert_is_complete(alert: dict[str, Any]) -> None:
    assert alert.get("for"), "every alert waits before firing"
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["runbook"]
    assert "$value" in annotations["description"]


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_alert_is_tested_firing_on_time_and_silent(alert: dict[str, Any]) -> None:
    cases = [{**case, "_step": test["_step"]} for test in unit_tests() for case in test.get("alert_rule_test", [])
             if case["alertname"] == alert["alert"]]
    firing = [case for case in cases if case.get("exp_alerts")]
    silent = [case for case in cases if not case.get("exp_alerts")]
    assert firing, "no test where it fires"
    assert silent, "no test where it stays silent"

    def minutes(case: dict[str, Any]) -> float:
        return _duration_minutes(case["eval_time"])

    # Silent one evaluation before its first firing: proves the `for:` and when it fires.
    first = min(firing, key=minutes)
    assert any(0 < minutes(first) - minutes(case) <= first["_step"] for case in silent)


def _duration_minutes(text: str) -> float:
    units = {"h": 60.0, "m": 1.0, "s": 1 / 60}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", text))


def test_provider_failure_ratio_uses_the_health_scores_statuses() -> None:
    """The rule's status lists are the ones the summaries and the fleet formula use
    (app.summary.promql, from app.scoring's outcome classes)."""
    expr = next(rule["expr"] for rule in records()
                if rule["record"] == "job_provider:model_inference_failures:ratio_rate5m")
    failed = re.search(r'status=~"([^"]+)"', expr).group(1)
    not_scored = re.search(r'status!~"([^"]+)"', expr).group(1)
    assert set(failed.split("|")) == set(ERROR_STATUSES)
    assert set(not_scored.split("|")) == set(INFERENCE_STATUSES) - set(SCORED_STATUSES)


def test_operations_alert_table_has_every_alert_and_its_runbook() -> None:
    readme = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for alert in alerts():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{alert['alert']}`")), None)
        assert row is not None, alert["alert"]
        assert alert["annotations"]["runbook"] in row


def test_promql_guide_lists_every_recording_rule() -> None:
    guide = (ROOT / "docs" / "PROMQL.md").read_text()
    for rule in records():
        assert f"| `{rule['record']}` |" in guide, rule["record"]
