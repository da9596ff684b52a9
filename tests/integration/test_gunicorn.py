"""The shipped gunicorn config, run for real: ``gunicorn -c deploy/gunicorn.conf.py`` with two
uvicorn workers in multiprocess mode.

The master empties the directory, starts the exporter and marks dead workers; the totals
are exact before and after a worker is killed with SIGKILL and replaced; SIGTERM to the
master takes the exporter down too.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import LOOPBACK
from tests.support.workers import ROOT, STALE_FILE, Workers, check_totals_survive_a_killed_worker

CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


def gunicorn(port: int, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    # No control socket: its default path in $HOME is shared by every gunicorn of the machine.
    return ([sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "--no-control-socket",
             "--log-level", "warning", "app.main:app"],
            {"GUNICORN_BIND": f"{LOOPBACK}:{port}", "WEB_CONCURRENCY": "2",
             "GATEWAY_METRICS_METRICS_PORT": str(metrics_port)})


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    handle = Workers(tmp_path_factory.mktemp("gunicorn"), gunicorn)
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop(signal.SIGTERM)


def test_master_empties_the_directory_before_the_workers_start(workers: Workers) -> None:
    assert not (workers.directory / STALE_FILE).exists()


def test_totals_are_exact_across_workers_and_survive_a_killed_worker(workers: Workers) -> None:
    check_totals_survive_a_killed_worker(workers)


def test_only_workers_write_files(workers: Workers) -> None:
    """The master (which imports the hooks' modules) and the exporter record nothing."""
    writers = {int(path.stem.rsplit("_", 1)[-1]) for path in workers.directory.glob("*.db")}
    assert writers
    assert workers.process.pid not in writers
    assert workers.exporter_pid() not in writers


def test_sigterm_to_the_master_stops_the_exporter(workers: Workers) -> None:
    exporter = workers.exporter_pid()
    workers.stop(signal.SIGTERM)
    assert workers.process.returncode == 0
    assert not Path(f"/proc/{exporter}").exists(), "the exporter outlived the master"
    with pytest.raises(httpx.ConnectError):
        httpx.get(workers.exporter_url + "/metrics", timeout=5.0, trust_env=False)
