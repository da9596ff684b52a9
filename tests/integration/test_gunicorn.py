"""The shipped gunicorn config, run for real: ``gunicorn -c deploy/gunicorn.conf.py`` with two
uvicorn workers in multiprocess mode.

The master empties the directory, starts the exporter and marks dead workers; the totals
are exact before and after a worker is killed with SIGKILL and replaced; SIGTERM to the
master takes the exporter down too, and SIGKILL takes the workers and the exporter down
within seconds, leaving the ports free; an upgrade in place (USR2, then
TERM to the old master) keeps every count and the exporter's port.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import LOOPBACK, poll
from tests.support.workers import (
    ROOT,
    STALE_FILE,
    Workers,
    check_sigkill_to_the_supervisor_stops_everything,
    check_totals_survive_a_killed_worker,
    gone,
    health_requests,
)

CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


def gunicorn(port: int, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    # No control socket: its default path in $HOME is shared by every gunicorn of the machine.
    # The console script, as deployments run it: an upgrade (USR2) re-executes the master's
    # argv, and `python -m gunicorn` would come back as gunicorn/__main__.py, whose folder
    # (gunicorn/http) then shadows the standard library's http.
    return ([str(Path(sys.executable).parent / "gunicorn"), "-c", str(CONFIG), "--no-control-socket",
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


def test_sigterm_to_the_master_stops_the_exporter(tmp_path: Path) -> None:
    # A gunicorn of its own: the module's is still serving the other tests, in any order.
    workers = Workers(tmp_path, gunicorn)
    try:
        workers.wait_ready()
        exporter = workers.exporter_pid()
        workers.stop(signal.SIGTERM)
        assert workers.process.returncode == 0
        assert not Path(f"/proc/{exporter}").exists(), "the exporter outlived the master"
        with pytest.raises(httpx.ConnectError):
            httpx.get(workers.exporter_url + "/metrics", timeout=5.0, trust_env=False)
    finally:
        workers.stop()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def test_sigkill_to_the_master_stops_the_workers_and_the_exporter(tmp_path: Path) -> None:
    """uvicorn-worker never checks its master: the config's post_fork hook makes each worker
    follow it, as the exporter does, so nothing keeps serving the ports."""
    workers = Workers(tmp_path, gunicorn)
    try:
        check_sigkill_to_the_supervisor_stops_everything(workers)
    finally:
        workers.stop()


def test_an_upgrade_in_place_keeps_the_counts_and_the_exporter_port(tmp_path: Path) -> None:
    workers = Workers(tmp_path, gunicorn)
    new_master = None
    try:
        workers.wait_ready()
        start = health_requests(workers.http.get(workers.exporter_url + "/metrics").text)
        workers.send(10)
        # Exactly the 10 sent on top of wait_ready's polls: nothing else calls this gunicorn of its
        # own, and the exporter's scrapes are counted by no worker. Polled, as a worker counts a
        # request as it ends.
        before = start + 10
        poll(lambda: health_requests(workers.http.get(workers.exporter_url + "/metrics").text) == before, 30.0,
             "the 10 requests counted, no more, no fewer")
        old_children = set(workers.children())

        workers.process.send_signal(signal.SIGUSR2)  # the new master is the old one's child
        new_master = poll(lambda: next((pid for pid in set(workers.children()) - old_children
                                        if any(b"app.exporter" in Path(f"/proc/{child}/cmdline").read_bytes()
                                               for child in _children(pid))), None),
                          60.0, "the new master and its exporter")
        assert health_requests(workers.http.get(workers.exporter_url + "/metrics").text) >= before  # kept
        workers.process.send_signal(signal.SIGTERM)  # the old master goes, with its workers and exporter
        workers.process.wait(30)

        poll(lambda: workers.http.get(workers.url + "/health").status_code == 200, 30.0, "the new workers")
        workers.send(10)
        # The new master's exporter took the port over, and no count of the old workers is lost.
        poll(lambda: health_requests(workers.http.get(workers.exporter_url + "/metrics").text) >= before + 10,
             30.0, "the new exporter with every count")
    finally:
        if new_master is not None and not gone(new_master):
            os.kill(new_master, signal.SIGTERM)
            poll(lambda: gone(new_master), 30.0, "the new master to stop")
        workers.stop()
