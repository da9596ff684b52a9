"""Every PromQL expression of docs/PROMQL.md parses and returns data on a real
Prometheus holding demo data (backfilled, not waited for), and the guide lists every
query the summary runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.catalogue import Category
from app.summary.fleet_health import FLEET_HEALTH_QUERIES
from app.summary.promql import error_rate_promql, packed_promql, packs_for, queries_for
from tests.support.backfill import create_blocks
from tests.support.servers import MetricsServer, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "PROMQL.md").read_text()
EXPRESSIONS = [block.strip() for block in re.findall(r"```promql\n(.*?)```", GUIDE, re.DOTALL)]
#: A recorded series' name (level:metric:operations): backfilled data has none (no rule
#: evaluates it); tests/deploy/test_promql_live.py runs those with the rules loaded.
RECORD = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
RAW_EXPRESSIONS = [expression for expression in EXPRESSIONS if not RECORD.search(expression)]


#: The backfilled hour ends here; queries are evaluated at this instant, so a slow run
#: cannot push the short windows ([1m]) past the data.
END = int(time.time()) - 5


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    tmp = tmp_path_factory.mktemp("promql-docs")
    openmetrics = tmp / "demo.om"
    subprocess.run(
        [sys.executable, "-m", "tests.support.backfill", "--out", str(openmetrics), "--seconds", "3600",
         "--step", "15", "--end", str(END)],
        check=True, cwd=ROOT, timeout=300, capture_output=True,
    )
    create_blocks(openmetrics, tmp / "tsdb")
    with start_prometheus(tmp, targets=[], data_dir=tmp / "tsdb") as server:
        yield server


def test_the_guide_has_expressions() -> None:
    assert len(EXPRESSIONS) > 30


@pytest.mark.parametrize("expression", RAW_EXPRESSIONS, ids=range(len(RAW_EXPRESSIONS)))
def test_expression_parses_and_returns_data(prometheus: MetricsServer, expression: str) -> None:
    data = prometheus.query(expression, time=str(END))
    assert data["result"], f"no data for: {expression}"


def test_guide_lists_every_summary_query() -> None:
    for query in queries_for(list(Category)):
        assert query.promql(300) in EXPRESSIONS, query.name


def test_guide_lists_every_recorded_form_of_a_summary_query() -> None:
    recorded = [query for query in queries_for(list(Category)) if query.recorded is not None]
    assert len(recorded) >= 6
    for query in recorded:
        assert query.recorded_promql() in EXPRESSIONS, query.name


def test_guide_lists_the_fleet_health_queries() -> None:
    for query in FLEET_HEALTH_QUERIES:
        assert query.promql(60) in EXPRESSIONS, query.name


def test_guide_error_rate_uses_the_outcome_taxonomy() -> None:
    assert error_rate_promql(300, "provider") in EXPRESSIONS


def test_packed_summary_requests_run(prometheus: MetricsServer) -> None:
    for name, pack in packs_for(list(Category)).items():
        data = prometheus.query(packed_promql(pack, 300), time=str(END))
        tags = {series["metric"].get("summary_query") for series in data["result"]}
        assert tags, name
        # A query alone travels as it is, untagged.
        assert tags <= ({query.name for query in pack} if len(pack) > 1 else {None})
