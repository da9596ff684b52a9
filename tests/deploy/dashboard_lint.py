"""The rules of Grafana's dashboard-linter (github.com/grafana/dashboard-linter), for the
dashboards of deploy/grafana. The linter is a Go tool; these are its rules, applied a
little more strictly: to every panel that has queries, and `increase` counts like `rate`.

- template-datasource: a `datasource` variable of type prometheus, labelled "Data source".
- panel-datasource: every panel and target uses it (`${datasource}`), no fixed uid.
- panel-title-description: every panel has a title and a description.
- panel-units: every panel has a unit Grafana knows.
- panel-no-targets: every panel has at least one query.
- target-promql: every query parses as PromQL (variables replaced by placeholders).
- target-rate-interval: every rate/irate/increase range is `$__rate_interval`.
- target-counter-agg: a `_total` series appears only inside rate/irate/increase.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import promql_parser

from tests.deploy.sources import panels, substitute

#: Panel types without queries of their own.
NO_QUERIES = frozenset({"row", "text", "dashlist", "news", "annolist"})
#: The linter's placeholder for $__rate_interval: a duration no one writes by hand.
MAGIC_RANGE_S = 11277964
RATE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
#: Units from Grafana's value formats (the linter's list, abridged to the families used
#: by dashboards of this kind).
VALID_UNITS = frozenset({
    "none", "short", "percent", "percentunit", "bool", "bool_yes_no", "bool_on_off",
    "currencyUSD", "currencyEUR", "currencyGBP",
    "bytes", "decbytes", "bits", "kbytes", "mbytes", "gbytes", "Bps", "bps", "binBps",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "clockms", "clocks",
    "hertz", "cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm",
    "dateTimeAsIso", "dateTimeFromNow",
})

Problem = str


def _parse(expr: str, variables: list[str]) -> Any:
    placeholders = {"__rate_interval": f"{MAGIC_RANGE_S}s", "__interval": "60s", "__range": "3600s"}
    placeholders.update({name: f"placeholder_{name}" for name in variables})
    return promql_parser.parse(substitute(expr, placeholders))


def children(node: Any) -> list[Any]:
    """The sub-expressions of a promql_parser node."""
    match node:
        case promql_parser.AggregateExpr():
            return [node.expr] + ([node.param] if node.param is not None else [])
        case promql_parser.BinaryExpr():
            return [node.lhs, node.rhs]
        case promql_parser.Call():
            return list(node.args)
        case promql_parser.MatrixSelector():
            return [node.vector_selector]
        case promql_parser.ParenExpr() | promql_parser.UnaryExpr() | promql_parser.SubqueryExpr():
            return [node.expr]
    return []


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node with the chain of its ancestors, outermost first."""
    yield node, parents
    for child in children(node):
        yield from walk(child, (*parents, node))


def _rate_interval_problems(tree: Any) -> Iterator[Problem]:
    for node, parents in walk(tree):
        if isinstance(node, promql_parser.MatrixSelector) and parents:
            parent = parents[-1]
            if (isinstance(parent, promql_parser.Call) and parent.func.name in RATE_FUNCTIONS
                    and node.range != datetime.timedelta(seconds=MAGIC_RANGE_S)):
                yield f"{parent.func.name}() over a fixed range instead of $__rate_interval"


def _counter_problems(tree: Any) -> Iterator[Problem]:
    for node, parents in walk(tree):
        if isinstance(node, promql_parser.VectorSelector) and (node.name or "").endswith("_total"):
            inside_rate = (len(parents) >= 2 and isinstance(parents[-1], promql_parser.MatrixSelector)
                           and isinstance(parents[-2], promql_parser.Call)
                           and parents[-2].func.name in RATE_FUNCTIONS)
            if not inside_rate:
                yield f"counter {node.name} is not inside rate, irate or increase"


def _uses_datasource_variable(ref: Any, names: set[str]) -> bool:
    uid = ref.get("uid") if isinstance(ref, dict) else ref
    return uid in {f"${name}" for name in names} | {f"${{{name}}}" for name in names}


def lint(board: dict[str, Any]) -> list[Problem]:
    """Every problem the rules find in one dashboard, as "rule: where: what"."""
    problems: list[Problem] = []
    title = board.get("title", "?")
    variables = board.get("templating", {}).get("list", [])
    datasources = [v for v in variables if v.get("type") == "datasource"]
    if not datasources:
        problems.append(f"template-datasource: {title}: no datasource variable")
    for variable in datasources:
        if variable.get("query") != "prometheus" or variable.get("name") not in ("datasource", "prometheus_datasource"):
            problems.append(f"template-datasource: {title}: variable {variable.get('name')} is not a "
                            "prometheus datasource variable named datasource")
        if variable.get("label") not in ("Data source", "Prometheus data source"):
            problems.append(f"template-datasource: {title}: datasource variable labelled {variable.get('label')!r}")
    ds_names = {v["name"] for v in datasources}
    variable_names = [v["name"] for v in variables]
    for panel in panels(board):
        if panel.get("type") in NO_QUERIES:
            continue
        where = f"{title} / {panel.get('title') or panel.get('id')}"
        if not _uses_datasource_variable(panel.get("datasource"), ds_names):
            problems.append(f"panel-datasource: {where}: uses {panel.get('datasource')!r}")
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"panel-title-description: {where}: missing title or description")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in VALID_UNITS:
            problems.append(f"panel-units: {where}: unit {unit!r}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel-no-targets: {where}")
        for target in targets:
            target_where = f"{where} [{target.get('refId')}]"
            if "datasource" in target and not _uses_datasource_variable(target["datasource"], ds_names):
                problems.append(f"panel-datasource: {target_where}: target uses {target['datasource']!r}")
            expr = target.get("expr", "")
            try:
                tree = _parse(expr, variable_names)
            except (ValueError, SyntaxError) as exc:
                problems.append(f"target-promql: {target_where}: {exc}")
                continue
            checks: list[tuple[str, Callable[[Any], Iterator[Problem]]]] = [
                ("target-rate-interval", _rate_interval_problems), ("target-counter-agg", _counter_problems)]
            for rule, check in checks:
                problems.extend(f"{rule}: {target_where}: {problem}" for problem in check(tree))
    return problems
