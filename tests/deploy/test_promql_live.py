"""Every PromQL expression shipped (dashboards with their variables substituted, recording
and alerting rules, docs/PROMQL.md) runs on a real Prometheus that scrapes the demo
service with deploy/prometheus/prometheus.yml's jobs and evaluates the rule files: each
parses and executes, and all but INCIDENT_ONLY return data."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import promql_parser
import pytest

from tests.deploy.prometheus_config import rule_files, scrape_jobs
from tests.deploy.sources import (
    PROMETHEUS_DIR,
    Shipped,
    dashboard_expressions,
    guide_expressions,
    load_dashboards,
    rule_expressions,
    rules,
    substitute,
)
from tests.support.servers import MetricsServer, QueryError, ServiceProcess, poll, start_prometheus

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
#: Grafana's variables as a dashboard opened on "All" would send them. $__rate_interval is
#: four scrape intervals at least; the tests scrape every second.
DASHBOARD_VALUES = {"provider": ".*", "model": ".*", "__rate_interval": "15s"}
#: Expressions that have data only after an incident: a breaker trip, a dropped value.
#: They must still parse and execute.
INCIDENT_ONLY = frozenset({
    "dashboard provider-health.json: Breaker transitions [A]",
    "rule GatewayCircuitFlapping",
    "signal 0 of GatewayCircuitFlapping",
    "rule GatewayRecordingRejects",
    "signal 0 of GatewayRecordingRejects",
    "docs: sum by (provider, to_state) (increase(gatewayz_provider_circuit_transitions_total[15m]))",
    "docs: sum by (helper, reason) (increase(gatewayz_recording_rejected_total[1h]))",
    "docs: sum(max by (instance, helper, reason) (gatewayz_recording_rejected_total))",
})
#: Data arrives within seconds; bounded so a broken expression fails instead of hanging.
DATA_TIMEOUT_S = 40.0
COMPARISONS = frozenset({">", "<", ">=", "<=", "==", "!="})
SET_OPERATORS = frozenset({"and", "or", "unless"})


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, demo_service: ServiceProcess) -> Iterator[MetricsServer]:
    tmp = tmp_path_factory.mktemp("promql-live")
    with start_prometheus(tmp, scrape_jobs(CONFIG, demo_service.address), rule_files=rule_files(CONFIG)) as server:
        records = {rule["record"] for rule in rules() if "record" in rule}

        def every_record_has_data() -> bool:
            found = server.query('count by (__name__) ({__name__=~"job[a-z_]*:.+"})')["result"]
            return records <= {series["metric"]["__name__"] for series in found}

        poll(every_record_has_data, DATA_TIMEOUT_S, "every recording rule to have data")
        yield server


def _is_constant(node: Any) -> bool:
    """A number, or arithmetic of numbers: (14.4 * 0.005)."""
    match node:
        case promql_parser.NumberLiteral():
            return True
        case promql_parser.ParenExpr() | promql_parser.UnaryExpr():
            return _is_constant(node.expr)
        case promql_parser.BinaryExpr():
            return _is_constant(node.lhs) and _is_constant(node.rhs)
    return False


def _returns_bool(node: Any) -> bool:
    return node.modifier is not None and node.modifier.return_bool


def signals(node: Any) -> Iterator[Any]:
    """What an alert compares with its thresholds: the alert itself is silent on healthy
    data, the values it watches are not."""
    match node:
        case promql_parser.BinaryExpr() if str(node.op) in SET_OPERATORS:
            yield from signals(node.lhs)
            yield from signals(node.rhs)
        case promql_parser.BinaryExpr() if str(node.op) in COMPARISONS and not _returns_bool(node):
            for side in (node.lhs, node.rhs):
                if not _is_constant(side):
                    yield from signals(side)
        case promql_parser.Call() if node.func.name == "label_replace":
            yield from signals(node.args[0])
        case promql_parser.ParenExpr():
            yield from signals(node.expr)
        case _:
            yield node


def alert_signals() -> Iterator[Shipped]:
    for rule in rules():
        if "alert" in rule:
            for index, node in enumerate(signals(promql_parser.parse(rule["expr"]))):
                yield Shipped(f"signal {index} of {rule['alert']}", str(node))


def _docs(shipped: Iterable[Shipped]) -> list[Shipped]:
    # Named by their text, so INCIDENT_ONLY survives edits elsewhere in the guide.
    return [Shipped(f"docs: {item.expr}", item.expr) for item in shipped]


def _without_data(prometheus: MetricsServer, shipped: list[Shipped], values: dict[str, str]) -> list[str]:
    """Runs every expression (a parse or execution error fails at once) until each one
    outside INCIDENT_ONLY returns data or the time runs out; returns those still empty."""
    deadline = time.monotonic() + DATA_TIMEOUT_S
    pending = list(shipped)
    while True:
        empty = []
        for item in pending:
            try:
                result = prometheus.query(substitute(item.expr, values))["result"]
            except QueryError as exc:
                pytest.fail(f"{item}: {exc}")
            if not result and item.where not in INCIDENT_ONLY:
                empty.append(item)
        if not empty or time.monotonic() >= deadline:
            return [f"{item}: {item.expr}" for item in empty]
        pending = empty
        time.sleep(0.5)  # the next scrape and rule evaluation


def test_dashboard_expressions_return_data(prometheus: MetricsServer) -> None:
    shipped = list(dashboard_expressions())
    assert len(shipped) > 50
    assert _without_data(prometheus, shipped, DASHBOARD_VALUES) == []


def test_rule_expressions_return_data(prometheus: MetricsServer) -> None:
    shipped = [item for item in rule_expressions() if not item.where.startswith("rule Gateway")]
    assert _without_data(prometheus, shipped, {}) == []


def test_alert_expressions_execute_and_their_signals_return_data(prometheus: MetricsServer) -> None:
    alerts = [item for item in rule_expressions() if item.where.startswith("rule Gateway")]
    assert len(alerts) == 9
    for item in alerts:  # silent on a healthy demo, or firing: either way they execute
        prometheus.query(item.expr)
    assert _without_data(prometheus, list(alert_signals()), {}) == []


def test_guide_expressions_return_data(prometheus: MetricsServer) -> None:
    assert _without_data(prometheus, _docs(guide_expressions()), {}) == []


def test_incident_only_list_names_shipped_expressions() -> None:
    names = {item.where for item in [*dashboard_expressions(), *rule_expressions(), *alert_signals(),
                                     *_docs(guide_expressions())]}
    assert INCIDENT_ONLY <= names


def test_template_variables_find_values(prometheus: MetricsServer) -> None:
    for name, board in load_dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            # label_values(selector, label): Grafana asks the series API.
            inner = variable["query"].removeprefix("label_values(").removesuffix(")")
            selector, label = (part.strip() for part in inner.rsplit(",", 1))
            response = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values", timeout=5, trust_env=False,
                                 params={"match[]": substitute(selector, DASHBOARD_VALUES)})
            assert response.json()["data"], f"{name}: variable {variable['name']} finds no values"
