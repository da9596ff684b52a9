"""deploy/grafana: the committed dashboards are what the script generates, pass the
dashboard-linter's rules, and offer the variables and views operators were promised."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.dashboard_lint import lint
from tests.deploy.sources import DASHBOARD_DIR, DEPLOY, ROOT, load_dashboards, panels

GENERATOR = DEPLOY / "grafana" / "generate_dashboards.py"
#: reference/003's five views and reference/000's overview.
EXPECTED = {
    "overview.json": "gateway-metrics-overview",
    "provider-health.json": "gateway-metrics-provider-health",
    "cost-analysis.json": "gateway-metrics-cost",
    "model-performance.json": "gateway-metrics-models",
    "business.json": "gateway-metrics-business",
    "performance-latency.json": "gateway-metrics-performance",
}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_what_the_script_generates() -> None:
    generated = generator().render()
    committed = {path.name: path.read_text() for path in DASHBOARD_DIR.glob("*.json")}
    assert committed.keys() == generated.keys()
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: run python {GENERATOR.relative_to(ROOT)}"


def test_the_six_dashboards() -> None:
    boards = load_dashboards()
    assert {name: board["uid"] for name, board in boards.items()} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_passes_the_linter_rules(name: str) -> None:
    assert lint(load_dashboards()[name]) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_has_provider_and_model_variables(name: str) -> None:
    variables = {v["name"]: v for v in load_dashboards()[name]["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for label in ("provider", "model"):
        variable = variables[label]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"]
        assert variable["datasource"]["uid"] == "${datasource}"
        assert f", {label})" in variable["query"]


def _good_panel() -> dict[str, Any]:
    board = load_dashboards()["overview.json"]
    return next(panel for panel in panels(board) if panel["type"] == "timeseries")


@pytest.mark.parametrize(("rule", "breakage"), [
    ("template-datasource", lambda board, panel: board["templating"]["list"].pop(0)),
    ("panel-datasource",
     lambda board, panel: panel.update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"})),
    ("panel-title-description", lambda board, panel: panel.pop("description")),
    ("panel-units", lambda board, panel: panel["fieldConfig"]["defaults"].pop("unit")),
    ("panel-no-targets", lambda board, panel: panel.update(targets=[])),
    ("target-promql", lambda board, panel: panel["targets"][0].update(expr="sum(rate(x[5m])")),
    ("target-rate-interval", lambda board, panel: panel["targets"][0].update(expr="sum(rate(x_total[5m]))")),
    ("target-counter-agg", lambda board, panel: panel["targets"][0].update(expr="sum(http_requests_total)")),
])
def test_the_linter_catches_each_rule(rule: str, breakage: Any) -> None:
    board = copy.deepcopy(load_dashboards()["overview.json"])
    panel = next(panel for panel in panels(board) if panel["type"] == "timeseries")
    breakage(board, panel)
    assert any(problem.startswith(rule) for problem in lint(board)), lint(board)


def test_grafana_in_compose_is_the_version_the_dashboards_target() -> None:
    sdk = importlib.metadata.version("grafana-foundation-sdk")  # "<build epoch>!<grafana version>"
    grafana = sdk.split("!")[-1]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    assert image.split(":")[-1].rsplit(".", 1)[0] == grafana.rsplit(".", 1)[0], (image, sdk)


def test_the_sdk_is_pinned_exactly() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"grafana-foundation-sdk=={importlib.metadata.version("grafana-foundation-sdk")}"' in pyproject


def test_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "gateway-metrics.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_operations_guide_lists_every_dashboard() -> None:
    readme = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for board in load_dashboards().values():
        assert f"| {board['title']} |" in readme and f"/d/{board['uid']}" in readme, board["title"]


def test_json_is_valid_for_grafana_import() -> None:
    for board in load_dashboards().values():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), "panel ids are unique"
        assert json.loads(json.dumps(board)) == board
