"""Every PromQL expression the project ships, by where it lives: the dashboards (with
their template variables), the recording and alerting rules, and docs/PROMQL.md."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
GUIDE = ROOT / "docs" / "PROMQL.md"
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Shipped:
    where: str  # "dashboard overview.json: Latency percentiles [A]", "rule GatewayScrapeDown", ...
    expr: str

    def __str__(self) -> str:
        return self.where


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with the template variables of ``values`` replaced ($name and ${name})."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return VARIABLE.sub(replace, expr)


def dashboard_expressions() -> Iterator[Shipped]:
    for name, board in load_dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                yield Shipped(f"dashboard {name}: {panel['title']} [{target['refId']}]", target["expr"])


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def rule_expressions() -> Iterator[Shipped]:
    for rule in rules():
        yield Shipped(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])


def guide_expressions() -> Iterator[Shipped]:
    blocks = re.findall(r"```promql\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    for index, block in enumerate(blocks):
        yield Shipped(f"docs/PROMQL.md block {index}", block.strip())
